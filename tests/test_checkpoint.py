import json
import shutil
from pathlib import Path

import pytest
import torch

import captionkit
from captionkit.checkpoint import load_checkpoint, save_checkpoint
from captionkit.config import Config
from captionkit.data.shapes import read_shapes
from captionkit.errors import CheckpointError
from captionkit.models.captioner import build_model

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def test_load_rebuilds_model_with_identical_captions(trained_checkpoint, shapes_root, tmp_path):
    model, cfg, vocab, meta = load_checkpoint(trained_checkpoint)
    assert meta["format_version"] == 1 and "BLEU-4" in meta["metrics"]
    copy = save_checkpoint(tmp_path / "copy", model, cfg, vocab, meta["epoch"], meta["metrics"])
    images = [r.image for r in read_shapes(shapes_root)[:6]]
    a = captionkit.load(trained_checkpoint).caption_batch(images, beam_size=2)
    b = captionkit.load(copy).caption_batch(images, beam_size=2)
    assert [r.text for r in a] == [r.text for r in b]
    assert all(abs(x.score - y.score) < 1e-6 for x, y in zip(a, b, strict=True))
    m2 = load_checkpoint(copy)[0]
    for (k, v), (k2, v2) in zip(model.state_dict().items(), m2.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(v, v2)


def test_missing_parts_are_refused(trained_checkpoint, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(trained_checkpoint, bad)
    (bad / "meta.json").unlink()
    with pytest.raises(CheckpointError, match="meta.json"):
        load_checkpoint(bad)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nowhere")


@pytest.mark.parametrize("breakage", ["no_vocab", "small_vocab", "bad_config", "bad_json"])
def test_inconsistent_metadata_is_refused(trained_checkpoint, tmp_path, breakage):
    bad = tmp_path / breakage
    shutil.copytree(trained_checkpoint, bad)
    meta = json.loads((bad / "meta.json").read_text())
    if breakage == "no_vocab":
        del meta["vocab"]
    elif breakage == "small_vocab":
        meta["vocab"]["itos"] = meta["vocab"]["itos"][:6]
    elif breakage == "bad_config":
        meta["config"]["decoder"]["hidden_dim"] = 7
    (bad / "meta.json").write_text("{oops" if breakage == "bad_json" else json.dumps(meta))
    with pytest.raises(CheckpointError):
        load_checkpoint(bad)


def test_weights_file_is_safetensors_not_pickle(trained_checkpoint):
    head = (trained_checkpoint / "model.safetensors").read_bytes()[:16]
    assert not head.startswith(b"\x80")  # a pickle protocol header
    assert sorted(p.name for p in trained_checkpoint.iterdir()) == ["meta.json", "model.safetensors"]


@pytest.mark.parametrize("decoder", ["lstm", "gru", "transformer"])
def test_weights_keep_the_names_and_shapes_of_format_1(decoder):
    """Old checkpoints still load: every model builds the parameter names and shapes that
    format-1 checkpoints were written with (recorded from the code before the package was
    reorganised, tests/fixtures/state_dict_v1.json)."""
    want = json.loads((FIXTURES / "state_dict_v1.json").read_text())[decoder]
    cfg = Config().override([f"decoder.name={decoder}", "decoder.embed_dim=16",
                             "decoder.hidden_dim=32", "decoder.attention_dim=16"])
    vocab_size = len(json.loads((FIXTURES / "checkpoint_v1" / "meta.json").read_text())
                     ["vocab"]["itos"])  # the recorded models' vocabulary
    got = {k: list(v.shape) for k, v in build_model(cfg, vocab_size).state_dict().items()}
    assert got == want


def test_a_format_1_checkpoint_loads(tmp_path):
    """The metadata an older captionkit wrote (tests/fixtures/checkpoint_v1/meta.json) loads
    and validates, with weights of the recorded names."""
    folder = tmp_path / "old"
    folder.mkdir()
    shutil.copy(FIXTURES / "checkpoint_v1" / "meta.json", folder / "meta.json")
    meta = json.loads((folder / "meta.json").read_text())
    cfg = Config.from_dict(meta["config"])
    torch.manual_seed(0)
    model = build_model(cfg, len(meta["vocab"]["itos"]))
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              str(folder / "model.safetensors"))
    loaded, cfg2, vocab, meta2 = load_checkpoint(folder)
    assert cfg2 == cfg and meta2["epoch"] == 3 and len(vocab) == len(meta["vocab"]["itos"])
    for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_an_unknown_decoder_in_a_checkpoint_is_a_checkpoint_error(tmp_path):
    folder = tmp_path / "odd"
    folder.mkdir()
    meta = json.loads((FIXTURES / "checkpoint_v1" / "meta.json").read_text())
    meta["config"]["decoder"]["name"] = "from_the_future"
    (folder / "meta.json").write_text(json.dumps(meta))
    (folder / "model.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match="from_the_future"):
        load_checkpoint(folder)


def test_a_run_stores_absolute_data_paths_and_evaluates_from_another_folder(
        shapes_root, tmp_path, monkeypatch):
    """fit resolves a relative data.root where the run is made: the run folder's config.yaml
    and its checkpoints name the data absolutely, so `evaluate` works from anywhere."""
    from captionkit.config import load_config
    from captionkit.infer.evaluation import DecodeSettings, evaluate_checkpoint
    from captionkit.train.fit import fit

    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    shutil.copytree(shapes_root, work / "shapes")
    elsewhere.mkdir()
    monkeypatch.chdir(work)
    cfg = Config().override([
        "data.root=shapes", "data.num_train=32", "data.num_dev=8", "data.num_test=8",
        "data.seed=1", "decoder.embed_dim=16", "decoder.hidden_dim=32",
        "decoder.attention_dim=16", "train.epochs=1", "train.max_steps=1", "train.batch_size=8",
        f"train.out_dir={tmp_path / 'run'}", "train.eval_max_len=4"])
    best = fit(cfg, progress=False).best_checkpoint
    assert load_config(tmp_path / "run" / "config.yaml").data.root == str(work / "shapes")
    monkeypatch.chdir(elsewhere)
    assert load_checkpoint(best)[1].data.root == str(work / "shapes")
    rec = evaluate_checkpoint(best, split="dev", settings=DecodeSettings(beam=1, max_len=4),
                              metrics=("BLEU",), progress=False)
    assert rec["images"] == 8 and rec["data_dir"] == str(work / "shapes")


def test_save_checkpoint_stores_absolute_data_paths(tmp_path, monkeypatch):
    from captionkit.data.vocab import Vocabulary

    monkeypatch.chdir(tmp_path)
    cfg = Config().override(["data.root=f8k", "data.feature_cache=cache", "decoder.embed_dim=8",
                             "decoder.hidden_dim=8", "decoder.attention_dim=8"])
    vocab = Vocabulary.build(["a dog", "a cat"])
    save_checkpoint(tmp_path / "ckpt", build_model(cfg, len(vocab)), cfg, vocab)
    data = json.loads((tmp_path / "ckpt" / "meta.json").read_text())["config"]["data"]
    assert data["root"] == str(tmp_path / "f8k")
    assert data["feature_cache"] == str(tmp_path / "cache")


def test_an_old_checkpoint_with_a_relative_root_still_loads_from_another_folder(
        tmp_path, monkeypatch):
    folder = tmp_path / "old"
    folder.mkdir()
    meta = json.loads((FIXTURES / "checkpoint_v1" / "meta.json").read_text())
    assert meta["config"]["data"]["root"] == "runs/data/shapes"  # as older captionkits wrote it
    (folder / "meta.json").write_text(json.dumps(meta))
    cfg = Config.from_dict(meta["config"])
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in build_model(cfg, len(meta["vocab"]["itos"]))
               .state_dict().items()}, str(folder / "model.safetensors"))
    monkeypatch.chdir(tmp_path)
    _, loaded, _, _ = load_checkpoint(folder)
    assert loaded.data.root == "runs/data/shapes"  # loading rewrites nothing


def test_a_checkpoint_may_be_named_by_its_weights_file_or_its_run_folder(trained_checkpoint,
                                                                         tmp_path, capsys):
    ref = load_checkpoint(trained_checkpoint)[0].state_dict()
    run = trained_checkpoint.parent  # the run folder holding best/
    for path in (trained_checkpoint / "model.safetensors", trained_checkpoint / "meta.json",
                 run):
        sd = load_checkpoint(path)[0].state_dict()
        assert all(torch.equal(sd[k], ref[k]) for k in ref), path
    assert f"{run} is a run folder: using its best checkpoint" in capsys.readouterr().out
    other = tmp_path / "notes.txt"
    other.write_text("x")
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        load_checkpoint(other)
    with pytest.raises(CheckpointError, match="checkpoint folder not found"):
        load_checkpoint(tmp_path / "absent")
