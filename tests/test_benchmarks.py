"""The benchmarks run end to end (tiny sizes, on the CPU), so a lent device's few minutes
are never spent on a script that fails before its first row."""

import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ["ref32", "ref16", "eager", "compiled", "graphed", "score", "kernel", "hoisted",
            "hoisted+k"]


def _env() -> dict[str, str]:
    paths = [str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}


def _figures(lines: list[str]) -> dict[str, str]:
    return dict(line.split("=") for line in lines if re.fullmatch(r"\w+=(nan|[\d.]+)", line))


def test_gpu_train_speed_quick_prints_every_row_and_the_headline_figures():
    env = _env()
    cmd = [sys.executable, str(ROOT / "benchmarks" / "gpu_train_speed.py"), "--quick",
           "--steps", "2", "--repeats", "1", "--batches", "2", "--batch-sizes", "32",
           "--best", "64", "--variants", ",".join(VARIANTS), "--beam-images", "16"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "FAILED" not in out.stdout
    table = out.stdout.split("\n\n")[-1].splitlines()
    rows = [line for line in table if line.split()[0].isdigit()]
    assert len(rows) == len(VARIANTS) + 1  # one row a variant at batch 32, the best row
    assert rows[-1].split()[0] == "64" and "bucketed" in rows[-1]
    figures = _figures(table)
    assert list(figures) == ["best_captions_per_s", "b32_captions_per_s",
                             "coco_epoch_seconds", "beam3_images_per_s"]
    assert all(float(v) > 0 for v in figures.values())
    assert float(figures["b32_captions_per_s"]) <= float(figures["best_captions_per_s"])


def test_train_speed_times_the_plain_baseline_and_ends_with_the_ratio():
    cmd = [sys.executable, str(ROOT / "benchmarks" / "train_speed.py"), "--skip-extract",
           "--train-steps", "1", "--repeats", "1", "--batch-sizes", "4",
           "--extract-images", "64"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    rows = [line for line in lines if line.startswith("train ")]
    assert any("plain PyTorch SAT loop (baseline), batch 4" in row for row in rows)
    assert any("captionkit / plain" in row for row in rows)
    assert not any(line.startswith("extract ") for line in lines)  # --skip-extract
    figures = _figures(lines)
    assert list(figures) == ["extract_images_per_s", "train_captions_per_s", "epoch_seconds",
                             "train_speedup_vs_plain"]
    assert lines[-1].startswith("train_speedup_vs_plain=")
    assert figures.pop("extract_images_per_s") == "nan"
    assert all(float(v) > 0 for v in figures.values())


def test_attention_lab_measures_rows_reuses_them_and_writes_the_report(tmp_path):
    """Two shapes rows in seconds: each row's JSON, the table, the doc with its figure, the
    closing key=value lines; a second call reuses the rows (trains nothing)."""
    out, doc = tmp_path / "lab", tmp_path / "doc" / "attention_lab.md"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "attention_lab.py"), "--bench", "shapes",
           "--rows", "lstm:additive,updown:adaptive", "--shapes-epochs", "1",
           "--set", "train.max_steps=2", "--set", "data.num_train=32", "--set",
           "data.num_dev=8", "--set", "data.num_test=8", "--shapes-root",
           str(tmp_path / "shapes"), "--repeats", "1", "--out", str(out), "--doc", str(doc)]
    run = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    lines = run.stdout.strip().splitlines()
    assert [line.split("=")[0] for line in lines[-10:]] == [
        "best_mechanism", "best_cider_d", "additive_cider_d",
        "shapes_min_soft_hit_rate_lstm_e1", "shapes_min_soft_hit_rate_looked_lstm_e1",
        "shapes_min_soft_hit_rate_updown_e1", "shapes_min_soft_hit_rate_looked_updown_e1",
        "shapes_budget_epochs", "shapes_min_soft_hit_rate", "shapes_min_soft_hit_rate_looked"]
    assert lines[-10] == "best_mechanism=n/a"  # no Flickr8k rows
    assert lines[-3] == "shapes_budget_epochs=1"
    assert lines[-2].split("=")[1] == lines[-7].split("=")[1]  # the headline is lstm's
    assert all(0 <= float(line.split("=")[1]) <= 1 for line in lines[-7:-3] + lines[-2:])
    rows = sorted(p.parent.name for p in out.glob("shapes/*/lab_row.json"))
    assert rows == ["lstm_additive_e1", "updown_adaptive_e1"]  # one folder per budget
    text = doc.read_text()
    assert "| shapes | updown | adaptive |" in text and (doc.with_suffix(".png")).is_file()
    assert "## Where colour and shape words look (shapes)" in text
    measured = json.loads((out / "shapes" / "lstm_additive_e1" / "lab_row.json").read_text())
    outcomes = measured["word_outcomes"]  # every colour/shape word has one outcome
    assert sum(n for counts in outcomes.values() for k, n in counts.items()
               if k != "mean_looked") == measured["attention_words"]
    again = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=300)
    assert again.returncode == 0 and again.stdout.count("reused") == 2
    kept = out / "shapes" / "updown_adaptive_e1" / "lab_row.json"
    before = json.loads(kept.read_text())
    rescore = subprocess.run([*cmd, "--rescore"], capture_output=True, text=True, env=_env(),
                             timeout=300)
    assert rescore.returncode == 0 and rescore.stdout.count("rescored") == 2, rescore.stderr
    after = json.loads(kept.read_text())
    assert after["metrics"] == before["metrics"]  # the same checkpoint scores the same
    assert after["train_seconds"] == before["train_seconds"] and "rescored" in after
    assert 0 < after["metrics"]["visual_weight"] <= 1.0 + 1e-6


def test_attention_speed_times_each_row_and_the_plain_baseline(tmp_path):
    cmd = [sys.executable, str(ROOT / "benchmarks" / "attention_speed.py"), "--rows",
           "lstm:additive,updown:hard", "--train-steps", "1", "--repeats", "1", "--out",
           str(tmp_path)]
    run = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    figures = _figures(run.stdout.strip().splitlines())
    assert list(figures) == ["plain_captions_per_s", "lstm_additive_captions_per_s",
                             "updown_hard_captions_per_s", "additive_speedup_vs_plain"]
    assert all(float(v) > 0 for v in figures.values())
    saved = json.loads((tmp_path / "speed.json").read_text())
    assert set(saved["rows"]) == {"lstm:additive", "updown:hard"}


def test_threads_benchmark_times_three_settings_idle_and_busy():
    cmd = [sys.executable, str(ROOT / "benchmarks" / "threads.py"), "--repeats", "1",
           "--steps", "1", "--images", "2"]
    run = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    lines = run.stdout.strip().splitlines()
    rows = [line for line in lines if line.startswith("| idle") or line.startswith("| busy")]
    assert len(rows) == 6 and sum("| 1 thread " in r for r in rows) == 2
    assert all(r.rstrip(" |").endswith("x") for r in rows)
    figures = _figures(lines)
    assert list(figures) == ["busy_default_vs_1thread", "busy_torch_default_vs_1thread",
                             "idle_default_vs_1thread"]
    assert all(float(v) > 0 for v in figures.values())


def test_grid_size_benchmark_reports_each_size_grid_and_cache_bytes(tmp_path):
    """Two tiny sizes of Lite0 and Lite2's native one on generated images: the table's grids and
    regions, then images/s and cache bytes per image (N x D x 2, float16) for every row."""
    cmd = [sys.executable, str(ROOT / "benchmarks" / "grid_size.py"), "--rows", "lite0:64,96",
           "efficientnet_lite2:260", "--images", "4", "--batch-size", "2", "--workers", "0",
           "--data-dir", str(tmp_path / "none")]
    run = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    lines = run.stdout.strip().splitlines()
    assert "generated 500x375 JPEGs" in lines[0]
    rows = [line for line in lines if line.startswith("| efficientnet_")]
    assert [r.split(" | ")[1:4] for r in rows] == [["64", "2x2", "4"], ["96", "3x3", "9"],
                                                   ["260", "9x9", "81"]]
    figures = _figures(lines)
    assert list(figures) == ["lite0_64_images_per_s", "lite0_96_images_per_s",
                             "lite2_260_images_per_s", "lite0_64_cache_bytes_per_image",
                             "lite0_96_cache_bytes_per_image", "lite2_260_cache_bytes_per_image"]
    assert all(float(v) > 0 for v in figures.values())
    assert [int(figures[f"{k}_cache_bytes_per_image"]) for k in ("lite0_64", "lite2_260")] == [
        4 * 1280 * 2, 81 * 1280 * 2]


def test_batch_caption_times_local_and_ray_on_the_same_files(random_checkpoint):
    """Local and one Ray actor on 6 files: the same captions, the closing key=value lines."""
    cmd = [sys.executable, str(ROOT / "benchmarks" / "batch_caption.py"), "--checkpoint",
           str(random_checkpoint), "--images", "6", "--workers", "1", "--max-len", "4"]
    run = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    lines = run.stdout.strip().splitlines()
    rows = [line for line in lines if line.startswith(("local ", "ray, "))]
    assert [r.split("  ")[0] for r in rows] == ["local", "ray, 1 actor"]
    assert all(r.split()[-2:] == ["=", "local"] and " 6 " in r for r in rows)
    figures = _figures(lines)
    assert list(figures) == ["ray1_images_per_s", "local_images_per_s", "ray_images_per_s"]
    assert all(float(v) > 0 for v in figures.values())
    assert lines[-1] == f"ray_images_per_s={figures['ray1_images_per_s']}"


def _benchmark_module(name: str):
    """Import benchmarks/<name>.py (the benchmarks folder is not a package)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


def test_lab_shapes_headline_is_lstm_at_the_largest_budget_with_every_soft_mechanism():
    """Rows at two budgets: each (decoder, budget) gets its own min lines; the headline takes
    lstm's largest budget that has every soft mechanism, not one with a row missing; hard
    attention never counts."""
    shapes_key_values = _benchmark_module("lab_report").shapes_key_values

    def row(dec, att, epochs, hit, looked):
        return {"bench": "shapes", "decoder": dec, "attention": att, "epochs_config": epochs,
                "metrics": {"attention_hit_rate": hit, "attention_hit_rate_looked": looked}}

    rows = [row("lstm", "additive", 8, 0.9, 0.9), row("lstm", "adaptive", 8, 0.4, 0.78),
            row("lstm", "hard", 8, 0.1, 0.1), row("lstm", "additive", 16, 0.95, 0.95),
            row("lstm", "adaptive", 16, 0.44, 0.87), row("gru", "general", 8, 0.28, 0.28),
            row("lstm", "additive", 32, 0.99, 0.99)]  # 32: adaptive not measured there
    lines = dict(line.split("=") for line in shapes_key_values(rows))
    assert lines["shapes_min_soft_hit_rate_lstm_e8"] == "0.4000"  # hard's 0.1 left out
    assert lines["shapes_min_soft_hit_rate_looked_lstm_e16"] == "0.8700"
    assert lines["shapes_min_soft_hit_rate_gru_e8"] == "0.2800"
    assert lines["shapes_min_soft_hit_rate_lstm_e32"] == "0.9900"
    assert lines["shapes_budget_epochs"] == "16"
    assert (lines["shapes_min_soft_hit_rate"], lines["shapes_min_soft_hit_rate_looked"]) == (
        "0.4400", "0.8700")
    rows.append(row("lstm", "general", 8, 0.97, 0.97))  # only 8 has every mechanism now
    assert shapes_key_values(rows)[-3:] == ["shapes_budget_epochs=8",
                                           "shapes_min_soft_hit_rate=0.4000",
                                           "shapes_min_soft_hit_rate_looked=0.7800"]
    rows.append(row("lstm", "aoa", 16, 0.9, 0.9))  # and now none
    assert shapes_key_values(rows)[-1] == "shapes_min_soft_hit_rate_looked=n/a"


def test_lab_flickr8k_headline_compares_at_the_additive_rows_budget():
    """best_mechanism= is the best CIDEr-D among the rows at lstm:additive's budget: a row
    trained longer does not win by its budget; with no additive row every row counts."""
    key_values = _benchmark_module("lab_report").key_values

    def row(dec, att, epochs, cider):
        return {"bench": "flickr8k", "decoder": dec, "attention": att, "epochs_config": epochs,
                "metrics": {"CIDEr-D": cider}}

    rows = [row("lstm", "additive", 3, 0.29), row("gru", "scaled_dot", 3, 0.36),
            row("lstm", "aoa", 12, 0.47)]
    assert key_values(rows)[:3] == ["best_mechanism=gru:scaled_dot", "best_cider_d=0.3600",
                                    "additive_cider_d=0.2900"]
    assert key_values(rows[1:])[:3] == ["best_mechanism=lstm:aoa", "best_cider_d=0.4700",
                                        "additive_cider_d=n/a"]


def test_lab_doc_links_figures_except_those_of_shared_photos(tmp_path):
    """A figure drawn from a ../shared photo is named in the doc, not linked (it is not
    committed); any other figure is linked."""
    shared_data = _benchmark_module("lab_figures").shared_data
    report = _benchmark_module("lab_report")
    PHOTOS, write_doc = report.PHOTOS, report.write_doc
    assert shared_data(PHOTOS / "a.jpg") and not shared_data(tmp_path / "a.jpg")
    args = type("Args", (), {"out": tmp_path / "runs"})()
    doc = tmp_path / "lab.md"
    figures = [(tmp_path / "lab.png", "Flickr8k models", False),
               (tmp_path / "lab_shapes.png", "shapes models", True)]
    kept = ROOT / "benchmarks/results/attention_lab_cpu_2026-12-07/shapes_gru_additive_e8.json"
    write_doc(args, [json.loads(kept.read_text())], "| table |", figures, doc)
    text = doc.read_text()
    assert "![attention maps](lab_shapes.png)" in text
    assert "](lab.png)" not in text and "Drawn locally to `lab.png`" in text


def test_updown_ablation_fixes_only_the_mean_and_swaps_only_the_attended_image():
    """``fix_mean_input`` at an image's own mean feature leaves its step unchanged, and
    changes another image's; ``OtherImage`` makes image 0 attend over image 1's grid while
    its attention LSTM still reads image 0's mean feature."""
    import torch

    from captionkit.config import DecoderConfig
    from captionkit.models.decoders import build_decoder

    ablation = _benchmark_module("updown_ablation")
    torch.manual_seed(0)
    cfg = DecoderConfig(name="updown", attention="additive", embed_dim=8, hidden_dim=16,
                        attention_dim=12)
    dec = build_decoder(cfg, vocab_size=11, feat_dim=6).eval()
    feats, token = torch.randn(2, 5, 6), torch.tensor([1, 2])  # (B, N, D), (B,)

    def step(d, f):
        with torch.no_grad():
            return d.step(f, d.init_state(f), token)[0]  # (B, V)

    before = step(dec, feats)
    fixed = build_decoder(cfg, vocab_size=11, feat_dim=6).eval()
    fixed.load_state_dict(dec.state_dict())
    ablation.fix_mean_input(fixed, feats[0].mean(dim=0))
    after = step(fixed, feats)
    assert torch.allclose(after[0], before[0], atol=1e-6)
    assert not torch.allclose(after[1], before[1], atol=1e-3)
    assert fixed.att_lstm.weight_ih[:, 16:22].abs().sum() == 0  # the mean's columns only

    dec.attention = ablation.OtherImage(dec.attention)
    state = dec.init_state(feats)
    with torch.no_grad():
        ctx, alpha = dec.attention(feats, state[-1], torch.zeros(2, 16))
        ref, ref_alpha = dec.attention.inner(feats.roll(1, dims=0),
                                             dec.attention.inner.project(feats.roll(1, dims=0)),
                                             torch.zeros(2, 16))
    assert torch.allclose(ctx, ref) and torch.allclose(alpha, ref_alpha)
    assert not torch.allclose(step(dec, feats), before, atol=1e-3)


def test_lab_kept_flickr8k_figure_is_linked_only_when_its_photo_is_not_shared(tmp_path):
    """A Flickr8k figure kept as drawn earlier (its rows' checkpoints gone) was drawn on the
    default photo: shared data unless --photo names another, so it is linked only then."""
    figures = _benchmark_module("lab_figures")
    doc = tmp_path / "lab.md"
    doc.with_suffix(".png").write_bytes(b"png")
    rows = [{"bench": "flickr8k", "decoder": "lstm", "attention": "additive",
             "dir": str(tmp_path / "gone")}]
    args = type("Args", (), {"photo": None, "config": None})()
    [(path, what, linked)] = figures.draw_attention_figures(args, rows, doc)
    assert path == doc.with_suffix(".png") and "drawn earlier" in what and not linked
    args.photo = str(figures.PHOTOS / "a.jpg")
    assert not figures.draw_attention_figures(args, rows, doc)[0][2]
    args.photo = str(tmp_path / "mine.jpg")
    assert figures.draw_attention_figures(args, rows, doc)[0][2]


def test_seed_ensemble_stats_and_the_gain_rule():
    """Sample sd and range over seeds; a gain counts only beyond the larger seed range."""
    bench = _benchmark_module("seed_ensemble")
    st = bench.seed_stats([0.30, 0.34, 0.32])
    assert st["n"] == 3 and abs(st["mean"] - 0.32) < 1e-12 and abs(st["sd"] - 0.02) < 1e-12
    assert abs(st["range"] - 0.04) < 1e-12 and bench.seed_stats([0.5])["sd"] == 0.0
    other = bench.seed_stats([0.35, 0.36, 0.37])
    assert bench.gain_beyond_spread(st, other)[1] is False  # +0.04 is not beyond 0.04
    diff, beyond = bench.gain_beyond_spread(st, bench.seed_stats([0.37, 0.38]))
    assert abs(diff - 0.055) < 1e-12 and beyond
    assert bench.parse_row("gru:scaled_dot=a,b") == ("gru:scaled_dot", ["a", "b"])
    with pytest.raises(SystemExit, match="LABEL=CHECKPOINT"):
        bench.parse_row("a,b")
    assert bench.slug("gru:scaled_dot+aoa") == "gru_scaled_dot_aoa"


def test_seed_ensemble_of_one_checkpoint_twice_scores_as_the_checkpoint(
        trained_checkpoint, shapes_root, tmp_path, monkeypatch, capsys):
    """Two copies of one checkpoint: zero spread, and their ensemble decodes as the single
    model, so every metric equals the seeds'; a rerun reads the kept scores back."""
    bench = _benchmark_module("seed_ensemble")
    ckpt = str(trained_checkpoint)
    argv = ["seed_ensemble.py", "--row", f"copies={ckpt},{ckpt}", "--data-dir", str(shapes_root),
            "--beam", "2", "--ensemble", "--out", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", argv)
    bench.main()
    first = _figures(capsys.readouterr().out.splitlines())
    [row] = json.loads((tmp_path / "seed_ensemble.json").read_text())
    assert row["seeds"][0] == row["seeds"][1]
    for metric in ("BLEU-4", "METEOR", "ROUGE-L", "CIDEr-D"):
        assert row["stats"][metric]["sd"] == 0.0
        assert abs(row["ensemble"][metric] - row["seeds"][0][metric]) < 1e-9
    assert float(first["copies_cider_d_sd"]) == 0.0
    assert first["copies_ensemble_cider_d"] == first["copies_cider_d_mean"]
    kept = (tmp_path / "copies" / "ensemble" / "metrics.json").stat().st_mtime_ns
    bench.main()
    assert _figures(capsys.readouterr().out.splitlines()) == first
    assert (tmp_path / "copies" / "ensemble" / "metrics.json").stat().st_mtime_ns == kept
