"""Self-critical sequence training (Rennie et al., 2017): optimise CIDEr-D directly.

After cross-entropy training, each image's captions are *sampled* from the model and rewarded
by their CIDEr-D against the image's references (document frequencies fixed from the training
references). The REINFORCE gradient uses a baseline so only captions better than it are made
more likely: the model's own greedy caption ("greedy", the paper's choice) or the mean reward of
the image's other samples ("mean", as in later work).
"""

from __future__ import annotations

import torch
from torch import Tensor

from captionkit.config import TrainConfig
from captionkit.data.dataset import Batch, ImageCaptionDataset
from captionkit.data.vocab import Vocabulary
from captionkit.errors import CaptionKitError
from captionkit.infer.decoding import greedy, sample
from captionkit.metrics import ptb
from captionkit.metrics.cider import CiderD
from captionkit.train.losses import caption_loss
from captionkit.train.optim import update
from captionkit.train.stages import Stage

EOS = "<eos>"  # the end of a caption, as a word, when rewards score endings


def reward_scorer(dataset: ImageCaptionDataset, eos: bool = False) -> CiderD:
    """CIDEr-D over the training references (PTB-tokenized), keyed by image id. ``eos``: each
    reference ends with an end-of-caption word, so n-grams that close a caption are scored
    (a caption cut off mid-phrase, "... on the", earns nothing for its ending)."""
    end = f" {EOS}" if eos else ""
    return CiderD({r.image_id: [ptb.tokenize(c) + end for c in r.captions]
                   for r in dataset.records})


def caption_rewards(cider: CiderD, image_ids: list[str], tokens: Tensor,
                    vocab: Vocabulary, eos: bool = False) -> Tensor:
    """CIDEr-D of each row of ``tokens`` (R, T) (word ids, <end>/<pad> ignored), (R,).
    ``eos`` (with a scorer built with ``eos``): rows that reached <end> end with :data:`EOS`."""
    ended = tokens.eq(vocab.end_id).any(1).tolist() if eos else [False] * len(tokens)
    texts = [ptb.tokenize(vocab.decode(row)) + (f" {EOS}" if e else "")
             for row, e in zip(tokens.tolist(), ended, strict=True)]
    return torch.from_numpy(cider.scores(image_ids, texts)).float()


def scst_loss(logprobs: Tensor, mask: Tensor, rewards: Tensor, baseline: Tensor) -> Tensor:
    """REINFORCE with a baseline: -(r - b) * log p(caption), averaged over sampled tokens."""
    advantage = (rewards - baseline).to(logprobs.device).unsqueeze(1)  # (R, 1)
    return -(advantage * logprobs * mask).sum() / mask.sum().clamp(min=1.0)


def baseline_rewards(model, feats: Tensor, rewards: Tensor, ids: list[str], cider: CiderD,
                     vocab: Vocabulary, cfg: TrainConfig) -> Tensor:
    """The baseline for each of the B*n sampled captions, (B*n,)."""
    n = cfg.scst_samples
    if cfg.scst_baseline == "mean":
        if n < 2:
            raise CaptionKitError("the 'mean' SCST baseline needs train.scst_samples >= 2")
        r = rewards.view(-1, n)  # (B, n)
        return ((r.sum(1, keepdim=True) - r) / (n - 1)).view(-1)  # mean of the other samples
    model.eval()
    with torch.no_grad():
        hyps = greedy(model.decoder, feats, start_id=vocab.start_id, end_id=vocab.end_id,
                      max_len=cfg.eval_max_len, banned=vocab.banned)
    model.train()
    rows = torch.nn.utils.rnn.pad_sequence(  # (B, T): the greedy captions with their <end>
        [torch.tensor(h.tokens + [vocab.end_id] * (h.alphas.size(0) > len(h.tokens)),
                      dtype=torch.long) for h in hyps],
        batch_first=True)
    greedy_r = caption_rewards(cider, ids[::n], rows, vocab, cfg.scst_eos)  # (B,)
    return greedy_r.repeat_interleave(n)


def reference_ce(model, feats: Tensor, batch, vocab: Vocabulary, device: torch.device) -> Tensor:
    """Teacher-forced cross-entropy of the batch's reference captions (per target token):
    mixed into the SCST loss (``train.scst_xe_weight``) it keeps the policy near human
    captions while the reward is optimised."""
    tokens = batch.tokens.to(device)  # (C, T)
    logits, alphas = model.decoder(feats, tokens[:, :-1],
                                   batch.image_index.to(device))  # (C, T-1, V), (C, T-1, N)
    return caption_loss(logits.float(), alphas.float(), tokens[:, 1:], vocab.pad_id, 0.0)[1]


class SelfCritical(Stage):
    """The SCST stage: per batch, ``train.scst_samples`` captions sampled per image, rewarded
    by CIDEr-D (``cider``: :func:`reward_scorer`) against a baseline (``train.scst_baseline``),
    REINFORCE (+ ``train.scst_xe_weight`` x the references' cross-entropy); logs the loss and
    the mean sampled-caption and baseline rewards on the training images."""

    name = "scst"
    logs = ("loss", "reward", "baseline")

    def __init__(self, model, optimizer: torch.optim.Optimizer, cfg: TrainConfig,
                 device: torch.device, vocab: Vocabulary, cider: CiderD,
                 image_ids: list[str]) -> None:
        """``image_ids``: the training dataset's image ids by record index (the rewards'
        keys)."""
        super().__init__(model, optimizer)
        self.cfg, self.device, self.vocab, self.cider = cfg, device, vocab, cider
        self.image_ids = image_ids

    def step(self, batch: Batch) -> dict[str, Tensor]:
        cfg, vocab, model = self.cfg, self.vocab, self.model
        b = batch.to(self.device)
        feats = model.grid_features(b.pixels, b.features)  # (B, N, D)
        ids = [self.image_ids[i] for i in batch.indices.tolist() for _ in range(cfg.scst_samples)]
        tokens, logprobs, mask = sample(model.decoder, feats, start_id=vocab.start_id,
                                        end_id=vocab.end_id, max_len=cfg.eval_max_len,
                                        num_samples=cfg.scst_samples,
                                        banned=vocab.banned)  # (B*n, T) each
        rewards = caption_rewards(self.cider, ids, tokens, vocab, cfg.scst_eos)  # (B*n,)
        base = baseline_rewards(model, feats.detach(), rewards, ids, self.cider, vocab, cfg)
        loss = scst_loss(logprobs, mask, rewards, base)
        if cfg.scst_xe_weight > 0:
            loss = loss + cfg.scst_xe_weight * reference_ce(model, feats, b, vocab, self.device)
        update(model, self.optimizer, loss, cfg, self.updates)
        self.updates += 1
        return {"loss": loss.detach(), "reward": rewards.mean(), "baseline": base.mean()}
