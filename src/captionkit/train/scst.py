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
from torch.utils.data import DataLoader

from captionkit.config import TrainConfig
from captionkit.data.dataset import ImageCaptionDataset
from captionkit.data.vocab import Vocabulary
from captionkit.errors import CaptionKitError
from captionkit.infer.decoding import greedy, sample
from captionkit.metrics import ptb
from captionkit.metrics.cider import CiderD
from captionkit.progress import bar as progress_bar
from captionkit.train.losses import caption_loss
from captionkit.train.optim import set_lr, update

BASELINES = ("greedy", "mean")


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
    if cfg.scst_baseline != "greedy":
        raise CaptionKitError(f"unknown train.scst_baseline {cfg.scst_baseline!r}; "
                              f"choose from {BASELINES}")
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


def train_scst_epoch(model, loader: DataLoader, optimizer: torch.optim.Optimizer,
                     cider: CiderD, vocab: Vocabulary, cfg: TrainConfig,
                     device: torch.device, step: int, total_steps: int,
                     progress: bool = True, on_step=None) -> tuple[dict[str, float], int]:
    """One SCST pass over ``loader``. Returns (mean loss, sampled-caption reward and baseline
    reward on the training images, global step after the epoch)."""
    if cfg.scst_xe_weight < 0:
        raise CaptionKitError(f"train.scst_xe_weight must be >= 0 (0 = the reward alone), not "
                              f"{cfg.scst_xe_weight}")
    model.train()
    records = loader.dataset.records
    sums = {"loss": 0.0, "reward": 0.0, "baseline": 0.0}
    batches = 0
    for batch in progress_bar(loader, "scst", progress):
        if cfg.max_steps is not None and step >= cfg.max_steps:
            break
        set_lr(optimizer, step, total_steps, cfg)
        x = batch.images.to(device)
        feats = x if x.dim() == 3 else model.encode(x)  # (B, N, D)
        ids = [records[i].image_id for i in batch.indices.tolist() for _ in
               range(cfg.scst_samples)]
        tokens, logprobs, mask = sample(model.decoder, feats, start_id=vocab.start_id,
                                        end_id=vocab.end_id, max_len=cfg.eval_max_len,
                                        num_samples=cfg.scst_samples,
                                        banned=vocab.banned)  # (B*n, T) each
        rewards = caption_rewards(cider, ids, tokens, vocab, cfg.scst_eos)  # (B*n,)
        base = baseline_rewards(model, feats.detach(), rewards, ids, cider, vocab, cfg)
        loss = scst_loss(logprobs, mask, rewards, base)
        if cfg.scst_xe_weight > 0:
            loss = loss + cfg.scst_xe_weight * reference_ce(model, feats, batch, vocab, device)
        update(model, optimizer, loss, cfg, step)
        step += 1
        batches += 1
        sums["loss"] += loss.item()
        sums["reward"] += float(rewards.mean())
        sums["baseline"] += float(base.mean())
        if on_step is not None:
            on_step(step, batches)
    return {k: v / max(batches, 1) for k, v in sums.items()}, step

