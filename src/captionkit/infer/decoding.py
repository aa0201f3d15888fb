"""Caption generation as pure functions over a decoder's ``init_state``/``step``.

One batched beam search serves evaluation, the CLI, the server and export; greedy decoding is
beam search with ``beam_size=1``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from captionkit.errors import ConfigError


@dataclass
class Hypothesis:
    """One generated caption: word ids (no <start>/<end>), per-word log-probs and attention."""

    tokens: list[int]
    score: float  # total log-probability, length-normalised when a length penalty is set
    logprobs: list[float]
    alphas: Tensor  # (T, N), one row per generated word (and the <end> step, if reached)


def _block_repeats(logp: Tensor, seqs: Tensor, n: int) -> Tensor:
    """Forbid (-inf) every next token that would repeat an n-gram already in a beam's caption."""
    t = seqs.size(1)
    if n <= 0 or t < n:  # no complete n-gram yet
        return logp
    if n == 1:
        banned = seqs  # (R, t) any word already said
        hit = torch.ones_like(seqs, dtype=logp.dtype)
    else:
        windows = seqs.unfold(1, n, 1)  # (R, t-n+1, n) every n-gram so far
        prefix = seqs[:, t - n + 1 :].unsqueeze(1)  # (R, 1, n-1) the last n-1 words
        hit = (windows[:, :, :-1] == prefix).all(-1).to(logp.dtype)  # (R, t-n+1)
        banned = windows[:, :, -1]  # (R, t-n+1) the word that completed each n-gram
    ban = torch.zeros_like(logp).scatter_add_(1, banned, hit) > 0  # (R, V)
    return logp.masked_fill(ban, float("-inf"))


def _repeat(state: tuple[Tensor, ...], n: int) -> tuple[Tensor, ...]:
    return state if n == 1 else tuple(t.repeat_interleave(n, dim=0) for t in state)


def _reorder(state: tuple[Tensor, ...], index: Tensor) -> tuple[Tensor, ...]:
    return tuple(s.index_select(0, index) for s in state)


# The beam size of every path's default (evaluate, caption, serve, the API): one caption,
# whatever the path.
DEFAULT_BEAM = 3


def check_decoding(beam_size: int, max_len: int | None) -> None:
    """Refuse a beam size below 1 or a caption length below 1 (``None``: the default)."""
    if not isinstance(beam_size, int) or isinstance(beam_size, bool) or beam_size < 1:
        raise ConfigError(f"beam size must be a whole number >= 1 (1 = greedy), got "
                          f"{beam_size!r}")
    if max_len is not None and (not isinstance(max_len, int) or max_len < 1):
        raise ConfigError(f"max_len must be a whole number >= 1 (words per caption), got "
                          f"{max_len!r}")


@torch.no_grad()
def beam_search(decoder, feats: Tensor, *, start_id: int, end_id: int, beam_size: int = 3,
                max_len: int = 20, length_penalty: float = 0.0,
                no_repeat_ngram: int = 0, banned: tuple[int, ...] = (),
                min_len: int = 1) -> list[list[Hypothesis]]:
    """Batched beam search: every image of ``feats`` (B, N, D) at once, ``beam_size`` beams each.

    Returns, for each image, its ``beam_size`` hypotheses, best first. The score of a finished
    beam is its log-probability divided by ``len ** length_penalty`` (0 = no normalisation).
    ``no_repeat_ngram=n`` (> 0) forbids any word n-gram from appearing twice in a caption;
    ``banned`` token ids are never generated (callers pass ``vocab.banned``: <pad>, <start>,
    <unk>). ``<end>`` is not allowed before ``min_len`` words: by default a caption is never
    empty (an untrained or weak model's wider beams otherwise often prefer ending at once).
    All tensor work is batched; Python loops only over time steps (and, after the search, over
    the results to package them).
    """
    check_decoding(beam_size, max_len)
    B, N, _ = feats.shape
    k = beam_size
    state = _repeat(decoder.init_state(feats), k)  # image-side work once per image
    feats = feats.repeat_interleave(k, dim=0)  # (B*k, N, D)
    token = torch.full((B * k,), start_id, dtype=torch.long, device=feats.device)
    scores = torch.full((B, k), float("-inf"), device=feats.device)
    scores[:, 0] = 0.0  # only the first beam is alive at the start
    scores = scores.view(-1)  # (B*k,)
    seqs = torch.empty(B * k, 0, dtype=torch.long, device=feats.device)
    lps = torch.empty(B * k, 0, device=feats.device)
    alphas = torch.empty(B * k, 0, N, device=feats.device)
    done = torch.zeros(B * k, dtype=torch.bool, device=feats.device)
    offsets = (torch.arange(B, device=feats.device) * k).unsqueeze(1)  # (B, 1)
    never = torch.tensor(banned, dtype=torch.long, device=feats.device)
    for t in range(max_len):  # at most max_len words (an <end> may follow within the budget)
        logits, state, alpha = decoder.step(feats, state, token)  # (B*k, V), (B*k, N)
        logp = torch.log_softmax(logits.float(), dim=-1)  # (B*k, V)
        if banned:
            logp = logp.index_fill(1, never, float("-inf"))
        if t < min_len:
            logp[:, end_id] = float("-inf")
        logp = _block_repeats(logp, seqs, no_repeat_ngram)
        V = logp.size(1)
        frozen = torch.full_like(logp, float("-inf"))
        frozen[:, end_id] = 0.0  # a finished beam repeats <end> at no cost
        logp = torch.where(done.unsqueeze(1), frozen, logp)
        cand = (scores.unsqueeze(1) + logp).view(B, k * V)  # (B, k*V)
        top, idx = cand.topk(k, dim=1)  # (B, k)
        src = (offsets + idx // V).view(-1)  # (B*k,) beam each survivor came from
        token = (idx % V).view(-1)  # (B*k,)
        scores = top.view(-1)
        state = _reorder(state, src)
        step_lp = logp[src, token]  # (B*k,)
        seqs = torch.cat([seqs[src], token.unsqueeze(1)], dim=1)  # (B*k, t+1)
        lps = torch.cat([lps[src], step_lp.unsqueeze(1)], dim=1)
        alphas = torch.cat([alphas[src], alpha[src].unsqueeze(1)], dim=1)  # (B*k, t+1, N)
        done = done[src] | (token == end_id)
        if bool(done.all()):
            break
    return _collect(seqs, lps, alphas, scores, B, k, end_id, length_penalty)


def _collect(seqs: Tensor, lps: Tensor, alphas: Tensor, scores: Tensor, B: int, k: int,
             end_id: int, length_penalty: float) -> list[list[Hypothesis]]:
    """Cut each beam at its <end>, normalise scores and sort each image's beams."""
    seqs, lps, alphas, scores = seqs.cpu(), lps.cpu(), alphas.cpu(), scores.cpu()
    out: list[list[Hypothesis]] = []
    for b in range(B):
        hyps = []
        for j in range(b * k, (b + 1) * k):
            row = seqs[j].tolist()
            n = row.index(end_id) if end_id in row else len(row)
            steps = min(n + 1, len(row))  # include the <end> step's log-prob and attention
            score = float(scores[j])
            if length_penalty > 0:
                score /= max(n, 1) ** length_penalty
            hyps.append(Hypothesis(row[:n], score, lps[j, :steps].tolist(), alphas[j, :steps]))
        hyps.sort(key=lambda h: h.score, reverse=True)
        out.append(hyps)
    return out


def greedy(decoder, feats: Tensor, *, start_id: int, end_id: int, max_len: int = 20,
           no_repeat_ngram: int = 0, banned: tuple[int, ...] = ()) -> list[Hypothesis]:
    """Greedy decoding: the best (only) hypothesis of a beam search with one beam."""
    hyps = beam_search(decoder, feats, start_id=start_id, end_id=end_id, beam_size=1,
                       max_len=max_len, no_repeat_ngram=no_repeat_ngram, banned=banned)
    return [h[0] for h in hyps]


def sample(decoder, feats: Tensor, *, start_id: int, end_id: int, max_len: int = 20,
           num_samples: int = 1, temperature: float = 1.0, banned: tuple[int, ...] = (),
           generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Ancestral sampling with gradients kept (for self-critical training).

    Each image of ``feats`` (B, N, D) gets ``num_samples`` captions, image-major. Returns
    ``tokens`` (B*n, T) with 0 after each caption's <end>, ``logprobs`` (B*n, T) of the sampled
    tokens, and ``mask`` (B*n, T): 1 on every sampled word and the <end> that closes it.
    """
    state = _repeat(decoder.init_state(feats), num_samples)
    feats = feats.repeat_interleave(num_samples, dim=0)  # (B*n, N, D)
    R = feats.size(0)
    token = torch.full((R,), start_id, dtype=torch.long, device=feats.device)
    alive = torch.ones(R, dtype=torch.bool, device=feats.device)
    never = torch.tensor(sorted({0, start_id, *banned}), device=feats.device)  # <pad>, <start>
    toks, lps, masks = [], [], []
    for _ in range(max_len + 1):  # max_len words, then a forced stop
        logits, state, _ = decoder.step(feats, state, token)  # (R, V)
        logits = logits.float().index_fill(1, never, float("-inf"))
        logp = torch.log_softmax(logits / temperature, dim=-1)  # (R, V)
        token = torch.multinomial(logp.detach().exp(), 1, generator=generator).squeeze(1)
        masks.append(alive)
        toks.append(torch.where(alive, token, torch.zeros_like(token)))
        lps.append(logp.gather(1, token.unsqueeze(1)).squeeze(1) * alive)
        alive = alive & (token != end_id)
        if not bool(alive.any()):
            break
    return torch.stack(toks, 1), torch.stack(lps, 1), torch.stack(masks, 1).float()
