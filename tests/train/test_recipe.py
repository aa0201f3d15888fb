"""train.stages: a multi-stage recipe run by one fit, each stage resumable."""

import json

import pytest
import torch
from safetensors.torch import load_file

from captionkit.checkpoint import load_checkpoint
from captionkit.config import Config
from captionkit.config_stages import stage_configs
from captionkit.errors import CaptionKitError, ConfigError
from captionkit.train.fit import fit
from captionkit.train.recipe import finished_stages

RECIPE = ("train.stages=[{stage: xe, epochs: 2, lr: 0.003}, "
          "{name: polish, stage: xe, epochs: 1, lr: 0.0003, encoder.finetune_blocks: 1, "
          "decoder.dropout: 0.0}]")


def _recipe(tiny_config, *extra):
    return tiny_config.override(["encoder.trainable=false", "train.max_steps=4", RECIPE, *extra])


def test_stage_configs_chain_folders_and_checkpoints(tiny_config):
    cfg = _recipe(tiny_config)
    (n1, c1), (n2, c2) = stage_configs(cfg)
    assert (n1, n2) == ("1-xe", "polish")
    assert c1.train.out_dir == f"{cfg.train.out_dir}/1-xe" and c1.train.init is None
    assert c2.train.init == f"{cfg.train.out_dir}/1-xe/best"
    assert (c1.train.lr, c2.train.lr, c2.train.epochs) == (0.003, 0.0003, 1)
    assert (c1.encoder.finetune_blocks, c2.encoder.finetune_blocks) == (0, 1)
    assert (c1.decoder.dropout, c2.decoder.dropout) == (cfg.decoder.dropout, 0.0)
    assert c1.train.stages == [] and c1.train.max_steps == 4  # the rest is the recipe's own
    assert Config.from_dict(cfg.to_dict()) == cfg  # the recipe round-trips through YAML/JSON


@pytest.mark.parametrize("stages, message", [
    ("[{stage: sgd, epochs: 1}]", "unknown train.stage 'sgd'; choose one of: xe, scst"),
    ("[{stage: xe}]", "train.stages[0] is missing epochs"),
    ("[{epochs: 2}]", "train.stages[0] is missing stage"),
    ("[{stage: xe, epochs: 1, lrr: 0.1}]", "unknown key 'lrr' (did you mean train.lr?)"),
    ("[{stage: xe, epochs: 1, out_dir: x}]", "out_dir is set by the recipe"),
    ("[{stage: xe, epochs: 1, decoder.hidden_dim: 8}]", "unknown key 'decoder.hidden_dim'"),
    ("[{stage: xe, epochs: 1, encoder.finetune: 1}]", "unknown field(s) encoder.finetune"),
    ("[{stage: scst, epochs: 1}]", "starts from a trained model: put an xe stage before it"),
    ("[{stage: xe, epochs: 1}, {stage: xe, epochs: 1, name: 1-xe}]", "must be unique"),
    ("[{stage: xe, epochs: 1, name: ../up}]", "folder-safe"),
    ("[{stage: xe, epochs: -1}]", "train.stages[0] (1-xe): train.epochs must be >= 1"),
    ("{stage: xe}", "train.stages must be a list"),
])
def test_bad_stage_lists_are_refused_at_config_load(tiny_config, stages, message):
    with pytest.raises(ConfigError) as e:
        tiny_config.override([f"train.stages={stages}"])
    assert message in str(e.value)


def test_bad_stage_is_refused_before_any_data_is_read(tiny_config, tmp_path):
    cfg = tiny_config.override([f"data.root={tmp_path / 'nothing here'}", RECIPE,
                                f"train.out_dir={tmp_path / 'run'}"])
    bad = Config.from_dict({**cfg.to_dict(), "train": {**cfg.to_dict()["train"], "stages": [
        {"stage": "xe", "epochs": 1, "data.feature_cache": str(tmp_path / "cache"),
         "encoder.trainable": True}]}})
    with pytest.raises(CaptionKitError, match="feature_cache needs a frozen encoder"):
        fit(bad, progress=False)
    assert not (tmp_path / "run").exists()  # nothing written, the (missing) data never read


def test_recipe_runs_every_stage_from_the_previous_best(tiny_config):
    cfg = _recipe(tiny_config)
    result = fit(cfg, progress=False)
    run = result.run_dir
    done = finished_stages(run)
    assert [d["name"] for d in done] == ["1-xe", "polish"]
    assert result.best_checkpoint == run / "polish" / "best"
    assert (run / "1-xe" / "best" / "model.safetensors").is_file()  # each stage's best kept
    assert [h["stage"] for h in result.history] == ["1-xe", "polish"]  # max_steps: 1 epoch each
    assert Config.from_dict(json.loads((run / "polish" / "best" / "meta.json").read_text())
                            ["config"]).train.init.endswith("1-xe/best")
    first = load_file(str(run / "1-xe" / "best" / "model.safetensors"))
    second = load_file(str(run / "polish" / "best" / "model.safetensors"))
    changed = {k for k in first if not torch.equal(first[k], second[k])}
    assert any(k.startswith("decoder.") for k in changed)
    enc = [k for k in changed if k.startswith("encoder.")]
    assert enc and len(enc) < len([k for k in first if k.startswith("encoder.")])  # last stage only
    _, saved, _, _ = load_checkpoint(run / "polish" / "best")
    assert saved.encoder.finetune_blocks == 1 and saved.train.lr == 0.0003


def test_an_interrupted_recipe_resumes_where_it_stopped(tiny_config, monkeypatch):
    cfg = _recipe(tiny_config)
    import captionkit.train.fit as fit_module

    real, calls = fit_module.fit, []

    def stop_in_second_stage(stage_cfg, progress=True, resume=False, overwrite=False):
        calls.append((stage_cfg.train.out_dir, resume))
        if stage_cfg.train.out_dir.endswith("polish"):
            raise KeyboardInterrupt  # the machine went away during stage 2
        return real(stage_cfg, progress, resume, overwrite)

    monkeypatch.setattr(fit_module, "fit", stop_in_second_stage)
    with pytest.raises(KeyboardInterrupt):
        real(cfg, progress=False)
    assert [d["name"] for d in finished_stages(cfg.train.out_dir)] == ["1-xe"]
    with pytest.raises(CaptionKitError, match="not empty"):
        real(cfg, progress=False)  # a new run into the folder is refused
    monkeypatch.setattr(fit_module, "fit", real)
    first = load_file(f"{cfg.train.out_dir}/1-xe/best/model.safetensors")
    result = real(cfg, progress=False, resume=True)
    assert [d["name"] for d in finished_stages(cfg.train.out_dir)] == ["1-xe", "polish"]
    again = load_file(f"{cfg.train.out_dir}/1-xe/best/model.safetensors")
    assert all(torch.equal(first[k], again[k]) for k in first)  # stage 1 was not retrained
    assert result.best_checkpoint.parent.name == "polish"


def test_cli_trains_and_resumes_a_recipe(tiny_config, tmp_path, capsys):
    from captionkit.cli import main

    cfg_path = tmp_path / "recipe.yaml"
    _recipe(tiny_config).save(cfg_path)
    run = tmp_path / "cli_run"
    assert main(["train", "--config", str(cfg_path), "--out", str(run), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "stage 1/2 1-xe: xe, 2 epoch(s), lr 0.003" in out and "stage 2/2 polish" in out
    assert f"best checkpoint: {run / 'polish' / 'best'}" in out
    assert main(["train", "--resume", str(run), "--quiet"]) == 0  # all finished: nothing to do
    assert out.count("stage 1/2") == 1 and "finished earlier" in capsys.readouterr().out
