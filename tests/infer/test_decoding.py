import pytest
import torch

from captionkit.config import DecoderConfig
from captionkit.infer.decoding import beam_search, greedy
from captionkit.models.attention import ATTENTIONS
from captionkit.models.decoders import attention_decoders, build_decoder

START, END, V = 1, 2, 12


def _decoder(seed=0, name="lstm", attention="additive"):
    torch.manual_seed(seed)
    cfg = DecoderConfig(name=name, attention=attention, embed_dim=8, hidden_dim=16,
                        attention_dim=8, num_heads=2, dropout=0.0)
    return build_decoder(cfg, V, 6).eval()


def _reference_greedy(dec, feats, max_len):
    """A plain argmax loop, one image at a time: what greedy decoding means (the first word
    is never <end>: a caption is not empty)."""
    out = []
    for b in range(feats.size(0)):
        f = feats[b : b + 1]
        state, tok, words, lps = dec.init_state(f), torch.tensor([START]), [], []
        for t in range(max_len):
            logits, state, _ = dec.step(f, state, tok)
            lp = torch.log_softmax(logits, -1)[0]
            choose = lp.clone()
            if t == 0:
                choose[END] = float("-inf")
            tok = choose.argmax().view(1)
            lps.append(lp[tok].item())
            if tok.item() == END:
                break
            words.append(tok.item())
        out.append((words, sum(lps)))
    return out


@pytest.mark.parametrize("attention", ATTENTIONS.names())
def test_greedy_is_beam_search_with_one_beam_for_every_mechanism(attention):
    for name in attention_decoders():
        dec = _decoder(3, name, attention)
        feats = torch.randn(3, 4, 6, generator=torch.Generator().manual_seed(3))
        hyps = greedy(dec, feats, start_id=START, end_id=END, max_len=7)
        for h, (words, logp) in zip(hyps, _reference_greedy(dec, feats, 7), strict=True):
            assert h.tokens == words and h.score == pytest.approx(logp, abs=1e-4)


def test_greedy_is_beam_search_with_one_beam():
    for seed in range(5):
        dec = _decoder(seed, "lstm" if seed % 2 else "gru")
        feats = torch.randn(4, 5, 6)
        ref = _reference_greedy(dec, feats, max_len=7)
        hyps = greedy(dec, feats, start_id=START, end_id=END, max_len=7)
        beams = beam_search(dec, feats, start_id=START, end_id=END, beam_size=1, max_len=7)
        for (words, score), h, b in zip(ref, hyps, beams, strict=True):
            assert h.tokens == words == b[0].tokens
            assert abs(h.score - score) < 1e-4


def test_beam_returns_k_sorted_hypotheses_no_worse_than_greedy():
    dec = _decoder(3)
    feats = torch.randn(3, 5, 6)
    g = greedy(dec, feats, start_id=START, end_id=END, max_len=6)
    beams = beam_search(dec, feats, start_id=START, end_id=END, beam_size=4, max_len=6)
    for gh, hyps in zip(g, beams, strict=True):
        assert len(hyps) == 4
        scores = [h.score for h in hyps]
        assert scores == sorted(scores, reverse=True)
        assert hyps[0].score >= gh.score - 1e-5
        for h in hyps:
            assert abs(sum(h.logprobs) - h.score) < 1e-4
            assert h.alphas.shape[1] == 5 and END not in h.tokens and START not in h.tokens


def test_batched_beam_equals_one_image_at_a_time():
    dec = _decoder(4)
    feats = torch.randn(3, 5, 6)
    batched = beam_search(dec, feats, start_id=START, end_id=END, beam_size=3, max_len=6)
    for b in range(3):
        single = beam_search(dec, feats[b : b + 1], start_id=START, end_id=END, beam_size=3,
                             max_len=6)[0]
        assert [h.tokens for h in single] == [h.tokens for h in batched[b]]


def test_max_len_bounds_the_caption():
    dec = _decoder(5)
    with torch.no_grad():
        dec.out.bias.fill_(-1e4)
        dec.out.bias[7] = 1e4  # always say word 7, never <end>
    h = greedy(dec, torch.randn(2, 5, 6), start_id=START, end_id=END, max_len=4)
    assert [x.tokens for x in h] == [[7] * 4, [7] * 4]


class _Parrot(torch.nn.Module):
    """A decoder that always wants to say "3 4 3 4 3 4 ..." (and never <end>)."""

    def init_state(self, feats):
        return (torch.zeros(feats.size(0), dtype=torch.long),)

    def step(self, feats, state, token):
        (t,) = state
        logits = torch.zeros(feats.size(0), V)
        logits[torch.arange(feats.size(0)), torch.where(t % 2 == 0, 3, 4)] = 5.0
        logits[:, 5 + t % 3] = 2.0  # second choices, so blocking has somewhere to go
        logits[:, END] = -5.0
        return logits, (t + 1,), torch.full((feats.size(0), feats.size(1)), 1 / feats.size(1))


def _ngrams(words, n):
    return [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]


def test_no_repeat_ngram_blocks_repeats_in_every_beam():
    feats = torch.randn(2, 5, 6)
    plain = greedy(_Parrot(), feats, start_id=START, end_id=END, max_len=8)
    assert plain[0].tokens == [3, 4] * 4  # without blocking it repeats itself
    for n in (1, 2, 3):
        beams = beam_search(_Parrot(), feats, start_id=START, end_id=END, beam_size=3,
                            max_len=8, no_repeat_ngram=n)
        for hyps in beams:
            for h in hyps:
                grams = _ngrams(h.tokens, n)
                assert len(grams) == len(set(grams)), (n, h.tokens)


def test_length_penalty_normalises_the_score():
    dec = _decoder(1)
    feats = torch.randn(2, 5, 6)
    raw = beam_search(dec, feats, start_id=START, end_id=END, beam_size=3, max_len=6)
    norm = beam_search(dec, feats, start_id=START, end_id=END, beam_size=3, max_len=6,
                       length_penalty=1.0)
    for r, m in zip(raw, norm, strict=True):
        for h in m:
            assert abs(h.score - sum(h.logprobs) / max(len(h.tokens), 1)) < 1e-4
        assert {tuple(h.tokens) for h in r} == {tuple(h.tokens) for h in m}


def test_sample_shapes_masks_and_gradients():
    from captionkit.infer.decoding import sample

    dec = _decoder(2).train()
    feats = torch.randn(3, 5, 6)
    g = torch.Generator().manual_seed(0)
    toks, lps, mask = sample(dec, feats, start_id=START, end_id=END, max_len=6, num_samples=4,
                             generator=g)
    assert toks.shape == lps.shape == mask.shape and toks.size(0) == 12 and toks.size(1) <= 7
    assert not ((toks == 0) & (mask == 1)).any() and not (toks == START).any()
    for row, m in zip(toks.tolist(), mask.tolist(), strict=True):
        n = int(sum(m))
        assert all(t != END for t in row[: n - 1])  # nothing sampled after <end>
        assert all(t == 0 for t in row[n:])
    assert (lps <= 0).all() and (lps[mask == 0] == 0).all()
    (lps * mask).sum().backward()
    assert dec.embed.weight.grad is not None
    again = sample(dec, feats, start_id=START, end_id=END, max_len=6, num_samples=4,
                   generator=torch.Generator().manual_seed(0))[0]
    assert torch.equal(again, toks)  # seeded


def test_banned_tokens_are_never_generated():
    feats = torch.randn(2, 5, 6)
    for hyps in beam_search(_Parrot(), feats, start_id=START, end_id=END, beam_size=3,
                            max_len=6, banned=(0, 1, 3)):
        for h in hyps:
            assert not {0, 1, 3} & set(h.tokens) and h.tokens


@pytest.mark.parametrize(("beam", "max_len", "says"), [(0, 5, "beam size"), (-1, 5, "beam size"),
                                                       (2, 0, "max_len"), (1, -3, "max_len")])
def test_a_beam_or_length_below_one_is_refused(beam, max_len, says):
    from captionkit.errors import ConfigError

    dec = build_decoder(DecoderConfig(embed_dim=8, hidden_dim=8, attention_dim=8), 12, 8)
    with pytest.raises(ConfigError, match=f"{says} must be a whole number >= 1"):
        beam_search(dec, torch.randn(1, 4, 8), start_id=1, end_id=2, beam_size=beam,
                    max_len=max_len)


def test_no_caption_is_empty_unless_min_len_is_zero():
    """An <end> first would be an empty caption: beam search never picks it by default."""
    for seed in range(4):
        forced = _EndFirst(_decoder(seed))  # <end> is by far the likeliest first word
        feats = torch.randn(3, 5, 6)
        for k in (1, 3):
            hyps = beam_search(forced, feats, start_id=START, end_id=END, beam_size=k, max_len=5)
            assert all(h.tokens for hs in hyps for h in hs), (seed, k)
            raw = beam_search(forced, feats, start_id=START, end_id=END, beam_size=k,
                              max_len=5, min_len=0)
            assert all(hs[0].tokens == [] for hs in raw), (seed, k)


class _EndFirst(torch.nn.Module):
    """A decoder whose first step strongly prefers <end>."""

    def __init__(self, dec):
        super().__init__()
        self.dec = dec

    def init_state(self, feats):
        return (*self.dec.init_state(feats), torch.zeros(feats.size(0)))

    def step(self, feats, state, token):
        *inner, t = state
        logits, inner, alpha = self.dec.step(feats, tuple(inner), token)
        bonus = torch.zeros_like(logits)
        bonus[:, END] = 50.0 * (t == 0).float()
        return logits + bonus, (*inner, t + 1), alpha
