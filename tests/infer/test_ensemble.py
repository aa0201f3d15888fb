"""Ensembles at decode time (``captionkit.infer.ensemble``): the decoder contract over several
checkpoints, the checks that refuse incompatible members, evaluate/caption/API end to end."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import captionkit
from captionkit.checkpoint import load_checkpoint, save_checkpoint
from captionkit.cli import main
from captionkit.data import by_split, load_records
from captionkit.data.features import extract_features
from captionkit.data.shapes import read_shapes
from captionkit.data.vocab import Vocabulary
from captionkit.errors import ConfigError
from captionkit.infer.captioner import Captioner
from captionkit.infer.decoding import beam_search
from captionkit.infer.ensemble import (
    EnsembleCaptioner,
    EnsembleDecoder,
    EnsembleModel,
    load_ensemble,
    load_members,
)
from captionkit.infer.evaluation import DecodeSettings, evaluate_checkpoint
from captionkit.models.captioner import build_model


def _perturbed(model, part: str, seed: int, scale: float = 0.5):
    """``model`` with noise (``scale`` x each tensor's spread) added to one part's weights."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in getattr(model, part).parameters():
            if p.numel() > 1:
                p.add_(torch.randn(p.shape, generator=gen) * scale * p.std())
    return model


@pytest.fixture(scope="module")
def members(trained_checkpoint, tmp_path_factory) -> dict[str, Path]:
    """A (trained), and checkpoints made from it: B (its decoder perturbed: same encoder),
    G (an untrained GRU with general attention over A's encoder), C (A with its encoder
    perturbed: fine-tuned elsewhere), V (a vocabulary one word different, one word longer)
    and E (another encoder named in the config)."""
    root = tmp_path_factory.mktemp("ensemble")
    model, cfg, vocab, _ = load_checkpoint(trained_checkpoint)
    out = {"A": Path(trained_checkpoint)}
    out["B"] = save_checkpoint(root / "B", _perturbed(model, "decoder", 1), cfg, vocab)
    model, _, _, _ = load_checkpoint(trained_checkpoint)
    torch.manual_seed(2)
    g_cfg = cfg.override(["decoder.name=gru", "decoder.attention=general"])
    gru = build_model(g_cfg, len(vocab), pretrained=False)
    gru.encoder.load_state_dict(model.encoder.state_dict())
    out["G"] = save_checkpoint(root / "G", gru, g_cfg, vocab)
    out["C"] = save_checkpoint(root / "C", _perturbed(model, "encoder", 3, 0.2), cfg, vocab)
    words = list(vocab.itos[4:])
    words[3] = "zebra"  # index 7 of itos
    other = Vocabulary([*words, "extra"], max_len=vocab.max_len)
    out["V"] = save_checkpoint(root / "V", build_model(cfg, len(other), pretrained=False),
                               cfg, other)
    shutil.copytree(trained_checkpoint, root / "E")
    meta = json.loads((root / "E" / "meta.json").read_text())
    meta["config"]["encoder"]["name"] = "efficientnet_lite0"
    (root / "E" / "meta.json").write_text(json.dumps(meta))
    out["E"] = root / "E"
    return out


@pytest.fixture(scope="module")
def pixels(shapes_root, members) -> torch.Tensor:
    """Four dev images, preprocessed: (4, 3, S, S)."""
    from captionkit.data.images import load_image

    model, _, _, _ = load_checkpoint(members["A"])
    dev = [r for r in read_shapes(shapes_root) if r.split == "dev"][:4]
    return torch.stack([model.encoder.preprocess(load_image(r.image)) for r in dev])


def _search(decoder, feats, vocab, beam: int):
    return beam_search(decoder, feats, start_id=vocab.start_id, end_id=vocab.end_id,
                       beam_size=beam, max_len=vocab.max_len, banned=vocab.banned)


def _plain(hyps):
    return [[(h.tokens, h.score, h.logprobs) for h in beams] for beams in hyps]


def test_an_ensemble_of_one_is_the_single_model(members, pixels):
    single = Captioner.from_checkpoint(members["A"], precision="fp32")
    model, cfg, vocab, meta = load_checkpoint(members["A"])
    one = EnsembleCaptioner(EnsembleModel([model], [cfg]), cfg, vocab, meta, precision="fp32")
    for beam in (1, 3):
        a = single.caption_pixels(pixels, beam)
        b = one.caption_pixels(pixels, beam)
        assert [(r.text, r.score, r.alternatives) for r in a] == \
               [(r.text, r.score, r.alternatives) for r in b]
        assert all((x.attention == y.attention).all() for x, y in zip(a, b, strict=True))
    assert type(captionkit.load([members["A"]], precision="fp32")) is Captioner
    assert type(load_ensemble(members["A"], precision="fp32")) is Captioner


def _member_step(model, feats, state, token):
    logits, state, alpha = model.decoder.step(feats, state, token)
    return torch.log_softmax(logits.float(), -1), state, alpha  # (B, V)


@pytest.mark.parametrize("pair", [("A", "B"), ("A", "G"), ("A", "C")])
def test_step_is_the_mean_of_the_members_log_softmax(members, pixels, pair):
    """Shared encoder (A, B), different decoders (A, G), per-member encoders (A, C)."""
    ensemble, _, vocab, _ = load_members([members[k] for k in pair])
    m1, m2 = ensemble.members
    assert ensemble.shared_encoder == (pair != ("A", "C"))
    with torch.no_grad():
        feats = ensemble.encode(pixels)  # (B, N, G*D)
        f1, f2 = m1.encode(pixels), m2.encode(pixels)
        D = f1.size(-1)
        if not ensemble.shared_encoder:
            assert torch.equal(feats, torch.cat([f1, f2], -1)) and not torch.equal(f1, f2)
        state = ensemble.decoder.init_state(feats)
        s1, s2 = m1.decoder.init_state(f1), m2.decoder.init_state(f2)
        token = torch.full((pixels.size(0),), vocab.start_id)
        for word in ("a", "red"):
            logp, state, alpha = ensemble.decoder.step(feats, state, token)
            lp1, s1, a1 = _member_step(m1, f1, s1, token)
            lp2, s2, a2 = _member_step(m2, f2, s2, token)
            torch.testing.assert_close(logp, (lp1 + lp2) / 2, rtol=0, atol=1e-6)
            torch.testing.assert_close(alpha, (a1 + a2) / 2, rtol=0, atol=1e-7)
            assert feats.size(-1) == (D if ensemble.shared_encoder else 2 * D)
            token = torch.full_like(token, vocab.stoi[word])


def _manual_greedy(decoder, feats, vocab) -> list[list[int]]:
    """Greedy decoding written out: argmax of the ensemble's renormalised step each time."""
    state = decoder.init_state(feats)
    token = torch.full((feats.size(0),), vocab.start_id)
    rows: list[list[int]] = [[] for _ in range(feats.size(0))]
    done = [False] * feats.size(0)
    for t in range(vocab.max_len):
        logits, state, _ = decoder.step(feats, state, token)
        logp = torch.log_softmax(logits.float(), -1)  # (B, V)
        logp[:, list(vocab.banned)] = float("-inf")
        if t == 0:
            logp[:, vocab.end_id] = float("-inf")  # at least one word
        token = logp.argmax(-1)  # (B,)
        for i, w in enumerate(token.tolist()):
            if not done[i]:
                done[i] = w == vocab.end_id
                rows[i] += [] if done[i] else [w]
        if all(done):
            break
    return rows


def test_beam_one_of_an_ensemble_is_greedy_over_the_ensemble(members, pixels):
    ensemble, _, vocab, _ = load_members([members["A"], members["G"]])
    with torch.no_grad():
        feats = ensemble.encode(pixels)
        beams = _search(ensemble.decoder, feats, vocab, 1)
        assert [b[0].tokens for b in beams] == _manual_greedy(ensemble.decoder, feats, vocab)


def test_an_ensemble_of_two_differs_sensibly(members, pixels):
    a = Captioner.from_checkpoint(members["A"], precision="fp32")
    b = Captioner.from_checkpoint(members["B"], precision="fp32")
    ab = captionkit.load([members["A"], members["B"]], precision="fp32")
    aa = captionkit.load([members["A"], members["A"]], precision="fp32")
    assert isinstance(ab, EnsembleCaptioner) and ab.meta["shared_encoder"]
    ra, rb, rab, raa = (c.caption_pixels(pixels, 3) for c in (a, b, ab, aa))
    # the same model twice: its own captions, its own scores up to rounding
    assert [r.text for r in raa] == [r.text for r in ra]
    assert [r.score for r in raa] == pytest.approx([r.score for r in ra], abs=1e-4)
    # two different models: scores that are neither's, captions that are words
    assert [r.score for r in rab] != pytest.approx([r.score for r in ra], abs=1e-3)
    assert [r.score for r in rab] != pytest.approx([r.score for r in rb], abs=1e-3)
    assert all(r.words and r.attention.shape == (len(r.words), *a.grid) for r in rab)
    assert all(abs(r.attention.sum(axis=(1, 2)) - 1).max() < 1e-4 for r in rab)


def test_different_vocabularies_are_refused_naming_the_difference(members):
    vocab = load_checkpoint(members["A"])[2]
    n = len(vocab)
    with pytest.raises(ConfigError) as err:
        load_members([members["A"], members["V"]])
    assert str(err.value).startswith(
        f"checkpoint {members['V']}'s vocabulary differs from {members['A']}'s: "
        f"{n + 1:,} vs {n:,} tokens; first difference at index 7: 'zebra' vs "
        f"{vocab.itos[7]!r}")
    with pytest.raises(ConfigError, match="vocabulary differs"):
        captionkit.load([members["V"], members["A"]])


def test_a_different_encoder_is_refused_before_any_weights_load(members):
    with pytest.raises(ConfigError, match=r"checkpoint .*E's encoder differs from .*: "
                                          r"encoder.name 'efficientnet_lite0' vs 'shapes_cnn'"):
        load_members([members["A"], members["B"], members["E"]])


def test_per_member_encoders_on_the_fast_path_match_eager(members, pixels):
    c = captionkit.load([members["A"], members["C"]], precision="fp32")
    assert c.fast and not c.meta["shared_encoder"]
    with torch.no_grad():
        torch.testing.assert_close(c.encode(pixels), c.model.encode(pixels), rtol=1e-4,
                                   atol=1e-4)


@pytest.fixture(scope="module")
def cache(members, shapes_root, tmp_path_factory) -> Path:
    """A's (and B's: the same weights) dev features."""
    model, cfg, _, _ = load_checkpoint(members["A"])
    records = by_split(load_records(cfg.override([f"data.root={shapes_root}"]).data), "dev")
    out = tmp_path_factory.mktemp("ens_cache") / "cache"
    extract_features(records, model.encoder, out, num_workers=0, progress=False)
    return out


def test_evaluate_an_ensemble_from_images_and_from_a_feature_cache(members, shapes_root, cache,
                                                                  tmp_path):
    ab = [members["A"], members["B"]]
    settings = DecodeSettings(beam=2, precision="fp32")
    fast = {"metrics": ("BLEU", "CIDEr-D"), "progress": False}  # no METEOR: no Java start
    x = evaluate_checkpoint(ab, data_dir=str(shapes_root), settings=settings,
                            out=tmp_path / "x", **fast)
    y = evaluate_checkpoint(ab, data_dir=str(shapes_root), settings=settings,
                            out=tmp_path / "y", feature_cache=str(cache), **fast)
    rx = json.loads((tmp_path / "x/results.json").read_text())
    ry = json.loads((tmp_path / "y/results.json").read_text())
    assert x["images"] == y["images"] == 8 == len(rx) == len(ry)
    assert sum(p == q for p, q in zip(rx, ry, strict=True)) >= len(rx) - 1  # fp16 cache
    saved = json.loads((tmp_path / "x/metrics.json").read_text())
    assert [m["checkpoint"] for m in saved["ensemble"]] == [str(p) for p in ab]
    assert saved["checkpoint"] == f"{ab[0]} + {ab[1]}" and saved["shared_encoder"]
    with pytest.raises(ConfigError, match="without --feature-cache"):
        evaluate_checkpoint([members["A"], members["C"]], data_dir=str(shapes_root),
                            feature_cache=str(cache), **fast)


def test_evaluate_a_list_of_one_is_the_checkpoint(members, shapes_root, tmp_path):
    settings = DecodeSettings(beam=2, precision="fp32")
    fast = {"metrics": ("BLEU", "CIDEr-D"), "progress": False}  # no METEOR: no Java start
    one = evaluate_checkpoint([members["A"]], data_dir=str(shapes_root), settings=settings,
                              out=tmp_path / "one", **fast)
    plain = evaluate_checkpoint(members["A"], data_dir=str(shapes_root), settings=settings,
                                out=tmp_path / "plain", **fast)
    assert one["checkpoint"] == str(members["A"]) and "ensemble" not in one
    assert one["scores"] == plain["scores"]
    assert (tmp_path / "one/results.json").read_text() == \
           (tmp_path / "plain/results.json").read_text()


def test_cli_evaluate_and_caption_with_two_checkpoints(members, shapes_root, tmp_path, capsys):
    two = ["--checkpoint", str(members["A"]), "--checkpoint", str(members["G"])]
    assert main(["evaluate", *two, "--data-dir", str(shapes_root), "--split", "test",
                 "--beam", "2", "--out", str(tmp_path / "eval"), "--quiet"]) == 0
    assert "test (8 images), beam 2" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert [m["decoder"] for m in metrics["ensemble"]] == ["lstm:additive", "gru:general"]
    dev = [r.image for r in read_shapes(shapes_root) if r.split == "dev"][:3]
    jsonl = tmp_path / "caps.jsonl"
    assert main(["caption", *dev, *two, "--beam", "2", "--json", str(jsonl),
                 "--attention-map", str(tmp_path / "maps.png")]) == 0
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [r["image"] for r in rows] == dev and all(r["caption"] for r in rows)
    assert len(list(tmp_path.glob("maps_*.png"))) == 3
    capsys.readouterr()
    assert main(["caption", dev[0], *two, "--runtime", "onnx"]) == 2
    assert "ensembles run on the PyTorch runtime" in capsys.readouterr().err
    assert main(["caption", dev[0], "--checkpoint", str(members["A"]), "--checkpoint",
                 str(members["V"])]) == 2
    assert "vocabulary differs" in capsys.readouterr().err


def test_ensemble_decoder_validates_its_groups(members):
    dec = load_checkpoint(members["A"])[0].decoder
    with pytest.raises(ConfigError, match="at least one"):
        EnsembleDecoder([])
    with pytest.raises(ValueError, match="feat_dim"):
        EnsembleDecoder([dec, dec], groups=(0, 1))
