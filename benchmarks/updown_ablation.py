"""What an Up-Down captioner's words rest on (issue 18's diagnosis of the shapes hit rate).

Up-Down's attention LSTM reads the image's mean feature at every step, so a word can come from
that mean instead of from where the map looks. Each kept shapes checkpoint is scored on the
test split (greedy, as the lab scores shapes) three ways:

* ``as is``;
* ``no mean``: the attention LSTM's mean-feature input fixed to the split's average (its input
  weights for that slice folded into the bias), so no per-image information enters there;
* ``other image``: the attention mechanism reads the next image's grid in the batch (keys and
  features rolled by one), so what enters through the map belongs to another image.

A drop in BLEU-4 says how much the captions need that path. Beside the hit rate, ``near``
counts a colour/shape word as a hit when its most-attended cell's centre lies within one grid
cell of the named object's box (the encoder is trained with the decoder, and a cell's 46 px
receptive field reaches into its neighbours). Usage::

    python benchmarks/updown_ablation.py runs/attention_lab/shapes/updown_*_e8/best

Ends with ``updown_<attention>_hit_near=`` and ``updown_<attention>_bleu4_<ablation>=`` lines.
"""

from __future__ import annotations

import argparse
import dataclasses

import torch
from torch import nn

import captionkit.models  # noqa: F401  (registers every built-in decoder)
from captionkit.data import by_split, load_records
from captionkit.data.images import load_image
from captionkit.data.shapes import IMAGE_SIZE, attention_hit_rate
from captionkit.demo import score_shapes
from captionkit.infer.captioner import Captioner

ABLATIONS = ("as is", "no mean", "other image")


class OtherImage(nn.Module):
    """A mechanism that attends over the next image's grid in the batch (rolled by one)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        for name in ("QUERY", "SENTINEL", "STOCHASTIC", "context_dim"):
            if hasattr(inner, name):
                setattr(self, name, getattr(inner, name))

    def project(self, feats: torch.Tensor) -> torch.Tensor:
        return self.inner.project(feats.roll(1, dims=0))  # (B, N, A), another image's keys

    def forward(self, feats, keys, query, cell=None, **extra):
        return self.inner(feats.roll(1, dims=0), keys, query, cell, **extra)


def near_hit_rate(results: list, grid: tuple[int, int]) -> float:
    """The hit rate with every object's box grown by one grid cell on each side."""
    pad = IMAGE_SIZE / grid[1]
    hits = total = 0
    for rec, res in results:
        grown = [dataclasses.replace(o, box=(o.box[0] - pad, o.box[1] - pad, o.box[2] + pad,
                                            o.box[3] + pad)) for o in rec.meta["objects"]]
        h, t = attention_hit_rate(res.text, res.attention.reshape(len(res.words), -1), grid,
                                  grown)
        hits, total = hits + h, total + t
    return hits / total if total else 0.0


@torch.no_grad()
def mean_feature(captioner: Captioner, records: list, batch: int = 64) -> torch.Tensor:
    """The average grid feature over the records' images (D,)."""
    total, n = 0.0, 0
    for i in range(0, len(records), batch):
        x = torch.stack([captioner.preprocess(load_image(r.image).convert("RGB"))
                         for r in records[i : i + batch]])
        feats = captioner.encode(x).float()  # (B, N, D)
        total, n = total + feats.mean(dim=1).sum(dim=0), n + feats.size(0)
    return total / n


@torch.no_grad()
def fix_mean_input(decoder: nn.Module, avg: torch.Tensor) -> None:
    """Fold the attention LSTM's mean-feature columns (input [h2; mean; word]) into its bias at
    the average feature ``avg`` (D,), and zero them."""
    h, d = decoder.hidden_dim, avg.numel()
    w = decoder.att_lstm.weight_ih  # (4H, H + D + E)
    decoder.att_lstm.bias_ih += w[:, h : h + d] @ avg
    w[:, h : h + d] = 0


def ablate(path: str) -> dict[str, float]:
    """BLEU-4 and hit rate of one Up-Down checkpoint under each ablation."""
    out, test = {}, None
    for ablation in ABLATIONS:
        captioner = Captioner.from_checkpoint(path, precision="fp32")  # a fresh copy each time
        if captioner.cfg.decoder.name != "updown":
            raise SystemExit(f"{path}: decoder {captioner.cfg.decoder.name}, not updown")
        test = test or by_split(load_records(captioner.cfg.data), "test")
        decoder = captioner.model.decoder
        if ablation == "no mean":
            fix_mean_input(decoder, mean_feature(captioner, test))
        elif ablation == "other image":
            decoder.attention = OtherImage(decoder.attention)
        metrics, results = score_shapes(captioner, test)
        out[ablation] = (metrics["BLEU-4"], metrics["attention_hit_rate"])
        if ablation == "as is":
            out["near"] = near_hit_rate(results, captioner.grid)
    return {"attention": captioner.cfg.decoder.attention, **out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoints", nargs="+", help="Up-Down shapes checkpoints (best/ folders)")
    args = ap.parse_args()
    rows = [ablate(p) for p in args.checkpoints]
    print("| row | hit near | " + " | ".join(f"BLEU-4 {a} (hit)" for a in ABLATIONS) + " |")
    print("|---|---|" + "---|" * len(ABLATIONS))
    for r in rows:
        cells = [f"{r['near']:.3f}"] + [f"{r[a][0]:.3f} ({r[a][1]:.3f})" for a in ABLATIONS]
        print(f"| updown:{r['attention']} | " + " | ".join(cells) + " |")
    for r in rows:
        print(f"updown_{r['attention']}_hit_near={r['near']:.4f}")
        for a in ABLATIONS:
            print(f"updown_{r['attention']}_bleu4_{a.replace(' ', '_')}={r[a][0]:.4f}")


if __name__ == "__main__":
    main()
