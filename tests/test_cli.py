import contextlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from captionkit import cli
from captionkit.cli import main
from captionkit.data.shapes import read_shapes
from captionkit.models.decoders import list_decoders
from captionkit.models.encoders import encoder_info, list_encoders
from captionkit.models.precision import bf16_native

PRESET = str(Path(__file__).resolve().parents[1] / "configs" / "shapes_demo.yaml")
# what the default precision ("auto") resolves to on this machine
DEFAULT = "bf16" if bf16_native(torch.device("cpu")) else "fp32"


def test_list_encoders_prints_an_aligned_table_of_metadata(capsys):
    assert main(["list-encoders"]) == 0
    header, *rows = capsys.readouterr().out.rstrip("\n").split("\n")
    assert header.split() == ["name", "output", "dim", "grid", "input", "size", "weights"]
    assert [r.split()[0] for r in rows] == list_encoders()
    starts = [header.index(h) for h in ("output dim", "grid", "input size", "weights")]
    for name, row in zip(list_encoders(), rows, strict=True):
        info = encoder_info(name)
        cells = [row[a:b].strip() for a, b in zip([0, *starts], [*starts, None], strict=True)]
        assert cells == [name, str(info.out_dim), f"{info.grid[0]}x{info.grid[1]}",
                         f"{info.input_size}px", info.weights]
        assert all(row[i - 2 : i] == "  " and row[i] != " " for i in starts)  # columns line up
    assert "torchvision IMAGENET1K_V1" in rows[list_encoders().index("densenet121")]


def test_train_help_lists_encoders(capsys):
    with contextlib.suppress(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert "densenet121" in out and "inceptionv3" in out


def test_train_with_overrides(tiny_config, tmp_path, capsys):
    cfg_path = tmp_path / "tiny.yaml"
    tiny_config.save(cfg_path)
    out = tmp_path / "cli_run"
    code = main(["train", "--config", str(cfg_path), "--set", "train.max_steps=1",
                 "--decoder", "gru", "--out", str(out), "--quiet"])
    assert code == 0
    assert "best checkpoint" in capsys.readouterr().out
    assert "name: gru" in (out / "config.yaml").read_text()


def test_caption_files_folder_json_and_attention_map(trained_checkpoint, shapes_root, tmp_path,
                                                     capsys):
    img = read_shapes(shapes_root)[0].image
    jsonl, png = tmp_path / "out.jsonl", tmp_path / "att.png"
    code = main(["caption", img, "--checkpoint", str(trained_checkpoint), "--beam", "2",
                 "--json", str(jsonl), "--attention-map", str(png)])
    assert code == 0 and png.is_file()
    row = json.loads(jsonl.read_text().splitlines()[0])
    assert row["image"] == img and len(row["alternatives"]) == 2
    assert row["precision"] == DEFAULT and row["score"] == round(row["score"], 4)
    out = capsys.readouterr().out.splitlines()
    assert out[1:] == [f"wrote {jsonl}", f"wrote 1 attention map(s): {png}"]
    folder = tmp_path / "imgs"
    folder.mkdir()
    for r in read_shapes(shapes_root)[:3]:
        (folder / r.image.split("/")[-1]).write_bytes(Path(r.image).read_bytes())
    maps = tmp_path / "maps"  # no suffix: .png, one per image
    assert main(["caption", str(folder), "--checkpoint", str(trained_checkpoint),
                 "--attention-map", str(maps)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 + 1
    assert lines[-1].startswith("wrote 3 attention map(s) (maps_0.png, ...: one per image): ")
    assert sorted(p.name for p in tmp_path.glob("maps_*.png")) == [
        "maps_0.png", "maps_1.png", "maps_2.png"]


def test_bad_inputs_give_clear_errors(trained_checkpoint, tmp_path, capsys):
    bad = tmp_path / "bad.jpg"
    bad.write_text("not an image")
    assert main(["caption", str(bad), "--checkpoint", str(trained_checkpoint)]) == 2
    err = capsys.readouterr().err
    assert "bad.jpg" in err and "Traceback" not in err
    assert main(["caption", str(bad), "--checkpoint", str(tmp_path / "none")]) == 2
    assert main(["train", "--config", PRESET, "--set", "train.nope=1"]) == 2
    assert main(["train", "--config", PRESET, "--encoder", "nope", "--set",
                 "train.max_steps=1"]) == 2
    assert "unknown encoder" in capsys.readouterr().err


@pytest.mark.parametrize(("flag", "kind", "names"), [("--encoder", "encoder", list_encoders()),
                                                     ("--decoder", "decoder", list_decoders())])
def test_unknown_registry_name_exits_2_listing_the_choices(flag, kind, names, tmp_path, capsys):
    code = main(["train", "--config", PRESET, flag, "nope", "--out", str(tmp_path / "run"),
                 "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err == f"captionkit: error: unknown {kind} 'nope'; choose one of: {', '.join(names)}\n"
    assert not (tmp_path / "run").exists()  # refused before any work


def test_bad_config_value_exits_2_naming_the_field(capsys):
    assert main(["train", "--config", PRESET, "--set", "train.fast_path=maybe"]) == 2
    err = capsys.readouterr().err
    assert "train.fast_path" in err and "auto, always, never" in err


def test_an_internal_key_error_is_not_swallowed(monkeypatch):
    def broken(args):
        raise KeyError("a bug, not a user error")

    monkeypatch.setattr(cli.commands, "cmd_list_decoders", broken)
    with pytest.raises(KeyError, match="a bug"):
        main(["list-decoders"])


def test_console_script_module_entry():
    out = subprocess.run([sys.executable, "-m", "captionkit", "list-decoders"],
                         capture_output=True, text=True, check=True)
    rows = out.stdout.splitlines()
    assert rows[0].split()[0] == "name"
    assert [r.split()[0] for r in rows[1:]] == ["gru", "lstm", "transformer", "updown"]
    assert "hidden_dim, num_layers, num_heads" in rows[3]  # what the transformer reads


def test_extract_features_then_train_from_cache(tiny_config, tmp_path, capsys):
    cfg_path = tmp_path / "tiny.yaml"
    tiny_config.override(["encoder.trainable=false"]).save(cfg_path)
    cache = tmp_path / "cache"
    args = ["extract-features", "--config", str(cfg_path), "--out", str(cache), "--workers", "0",
            "--batch-size", "8", "--quiet"]
    assert main(args) == 2  # the shapes CNN has no weights: refused unless said on purpose
    assert "--random-weights" in capsys.readouterr().err and not cache.exists()
    assert main([*args, "--random-weights"]) == 0
    assert "images cached" in capsys.readouterr().out
    # a different (freshly initialised) encoder must refuse this cache
    code = main(["train", "--config", str(cfg_path), "--set", f"data.feature_cache={cache}",
                 "--set", "train.seed=5", "--set", "train.max_steps=1", "--quiet"])
    assert code == 2 and "built differently" in capsys.readouterr().err


def test_download_help_lists_datasets(capsys):
    with contextlib.suppress(SystemExit):
        main(["download", "--help"])
    out = capsys.readouterr().out
    assert "flickr8k" in out and "coco2014" in out


def test_export_then_caption_with_onnxruntime(random_checkpoint, shapes_root, tmp_path, capsys):
    img = str(next(shapes_root.rglob("*.png")))
    out = tmp_path / "onnx"
    assert main(["export", "--checkpoint", str(random_checkpoint), "--format", "onnx",
                 "--out", str(out)]) == 0
    assert (out / "decoder_step.onnx").is_file()
    capsys.readouterr()
    assert main(["caption", img, "--checkpoint", str(random_checkpoint), "--precision",
                 "fp32"]) == 0
    torch_line = capsys.readouterr().out.strip()
    assert main(["caption", img, "--runtime", "onnx", "--checkpoint", str(out)]) == 0
    assert capsys.readouterr().out.strip() == torch_line
    assert main(["caption", img, "--runtime", "onnx", "--checkpoint", str(tmp_path)]) == 2


def test_serve_binds_to_loopback_by_default():
    from captionkit.cli import build_parser

    args = build_parser().parse_args(["serve", "--checkpoint", "x"])
    assert args.host == "127.0.0.1" and args.runtime == "torch"


def test_list_attention_prints_the_mechanisms_and_the_fast_path(capsys):
    assert main(["list-attention"]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert rows[0].split()[:2] == ["name", "reads"]
    table = {r.split()[0]: r for r in rows[1:]}
    assert set(table) == {"adaptive", "additive", "aoa", "general", "hard", "scaled_dot"}
    assert "yes" in table["additive"] and "reference path" in table["general"]
    assert "previous" in table["additive"] and "current" in table["adaptive"]


def test_train_without_a_config_says_what_to_pass(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train"]) == 2
    err = capsys.readouterr().err
    assert "train needs --config PRESET" in err and "captionkit demo" in err
    assert list(tmp_path.iterdir()) == []  # nothing generated into ./runs


def test_train_prints_rounded_metrics(tiny_config, tmp_path, capsys):
    cfg_path = tmp_path / "tiny.yaml"
    tiny_config.save(cfg_path)
    assert main(["train", "--config", str(cfg_path), "--set", "train.max_steps=1",
                 "--out", str(tmp_path / "r"), "--quiet"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("best checkpoint: ") and "e-" not in last
    values = last.split()[4::2]  # "best checkpoint: PATH  NAME VALUE  NAME VALUE ..."
    assert values and all(re.fullmatch(r"-?\d+(\.\d{4})?", v) for v in values), last


def test_evaluate_scores_the_captions_that_caption_gives(trained_checkpoint, shapes_root,
                                                         tmp_path, capsys):
    """Default flags on both paths: the same beam, the same precision, the same captions."""
    dev = [r for r in read_shapes(shapes_root) if r.split == "dev"]
    assert main(["evaluate", "--checkpoint", str(trained_checkpoint), "--data-dir",
                 str(shapes_root), "--out", str(tmp_path / "eval"), "--quiet"]) == 0
    jsonl = tmp_path / "caps.jsonl"
    assert main(["caption", *[r.image for r in dev], "--checkpoint", str(trained_checkpoint),
                 "--json", str(jsonl)]) == 0
    capsys.readouterr()
    scored = {Path(r["image_id"]).name: r["caption"]
              for r in json.loads((tmp_path / "eval" / "results.json").read_text())}
    given = {Path(r["image"]).name: (r["caption"], r["precision"])
             for r in map(json.loads, jsonl.read_text().splitlines())}
    assert {k: (v, DEFAULT) for k, v in scored.items()} == given and len(given) == len(dev)
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["precision"] == DEFAULT and metrics["decode"]["beam"] == 3
