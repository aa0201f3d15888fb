"""Self-critical training: reward, baselines, loss direction, and the scst stage of fit."""

from __future__ import annotations

import pytest
import torch

from captionkit.config import TrainConfig
from captionkit.data.vocab import Vocabulary
from captionkit.errors import CaptionKitError
from captionkit.metrics.cider import CiderD
from captionkit.train.fit import fit
from captionkit.train.scst import baseline_rewards, caption_rewards, scst_loss


def test_loss_pushes_up_captions_better_than_the_baseline():
    logits = torch.zeros(2, 4, requires_grad=True)
    lp = torch.log_softmax(logits, -1)[:, :1]  # (R=2, T=1): both sampled token 0
    loss = scst_loss(lp, torch.ones(2, 1), torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0]))
    loss.backward()
    # gradient descent raises the logit of the better-than-baseline sample, lowers the other
    assert logits.grad[0, 0] < 0 < logits.grad[1, 0]


def test_mean_baseline_is_the_other_samples_mean():
    r = torch.tensor([1.0, 2.0, 3.0, 10.0, 10.0, 10.0])
    cfg = TrainConfig(scst_samples=3, scst_baseline="mean")
    b = baseline_rewards(None, None, r, [], None, None, cfg)
    assert b.tolist() == pytest.approx([2.5, 2.0, 1.5, 10, 10, 10])
    with pytest.raises(CaptionKitError, match="unknown"):
        baseline_rewards(None, None, r, [], None, None, TrainConfig(scst_baseline="max"))


def test_rewards_decode_ids_and_score_against_the_image():
    vocab = Vocabulary.build(["a red circle", "a blue square"], min_freq=1)
    cider = CiderD({"x": ["a red circle"], "y": ["a blue square"]})
    rows = torch.tensor([vocab.encode("a red circle")[1:] + [0], vocab.encode("a red circle")[1:]
                         + [0]])
    r = caption_rewards(cider, ["x", "y"], rows, vocab)
    assert r[0] > r[1] >= 0


@pytest.mark.parametrize("eos,xe", [("false", 0.0), ("true", 0.5)])
def test_scst_stage_trains_from_a_checkpoint(trained_checkpoint, tiny_config, eos, xe):
    cfg = tiny_config.override(["train.stage=scst", f"train.init={trained_checkpoint}",
                                "train.scst_samples=2", "train.max_steps=2", "train.lr=1e-4",
                                f"train.scst_eos={eos}", f"train.scst_xe_weight={xe}"])
    result = fit(cfg, progress=False)
    row = result.history[0]
    assert row["step"] == 2 and {"reward", "baseline", "CIDEr-D"} <= set(row)
    assert (result.run_dir / "best" / "model.safetensors").is_file()


def test_scst_stage_needs_a_matching_init(trained_checkpoint, tiny_config):
    with pytest.raises(CaptionKitError, match="train.init"):
        fit(tiny_config.override(["train.stage=scst"]), progress=False)
    with pytest.raises(CaptionKitError, match="decoder.hidden_dim"):
        fit(tiny_config.override(["train.stage=scst", f"train.init={trained_checkpoint}",
                                  "decoder.hidden_dim=48"]), progress=False)
    with pytest.raises(CaptionKitError, match="train.scst_xe_weight must be >= 0"):
        fit(tiny_config.override(["train.stage=scst", f"train.init={trained_checkpoint}",
                                  "train.scst_xe_weight=-0.1"]), progress=False)


def test_scst_init_compares_only_the_fields_the_decoder_reads(trained_checkpoint, tiny_config):
    """The LSTM checkpoint has no heads or layers: transformer-only fields differing (even a
    head count the transformer would refuse) neither block the init nor get checked."""
    cfg = tiny_config.override(["train.stage=scst", f"train.init={trained_checkpoint}",
                                "train.scst_samples=2", "train.max_steps=1",
                                "decoder.num_heads=3", "decoder.num_layers=5"])
    assert fit(cfg, progress=False).history[0]["step"] == 1
    with pytest.raises(CaptionKitError, match="divisible by decoder.num_heads"):
        fit(tiny_config.override(["decoder.name=transformer", "decoder.num_heads=3"]),
            progress=False)


def test_eos_rewards_penalise_a_caption_cut_off_mid_phrase():
    refs = {"x": ["a dog runs on the beach", "a dog is running on the sand"],
            "y": ["a man rides a red bike"], "z": ["two girls play in the park"]}
    vocab = Vocabulary.build([c for cs in refs.values() for c in cs], min_freq=1)
    full = vocab.encode("a dog runs on the beach")[1:]  # ... <end>
    cut = vocab.encode("a dog runs on the")[1:]  # ended early: "... on the <end>"
    rows = torch.nn.utils.rnn.pad_sequence([torch.tensor(full), torch.tensor(cut)], True)
    plain = caption_rewards(CiderD(refs), ["x", "x"], rows, vocab)
    scorer = CiderD({k: [c + " <eos>" for c in cs] for k, cs in refs.items()})
    eos = caption_rewards(scorer, ["x", "x"], rows, vocab, eos=True)
    assert eos[1] / eos[0] < plain[1] / plain[0]  # the cut-off ending now costs more
    no_end = rows.clone()
    no_end[no_end == vocab.end_id] = 0  # ran out of length: no end word to score
    assert caption_rewards(scorer, ["x", "x"], no_end, vocab, eos=True)[0] < eos[0]
