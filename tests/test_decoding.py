import torch

from captionkit.config import DecoderConfig
from captionkit.decoding import beam_search, greedy
from captionkit.models.decoders import build_decoder

START, END, V = 1, 2, 12


def _decoder(seed=0, name="lstm"):
    torch.manual_seed(seed)
    cfg = DecoderConfig(name=name, embed_dim=8, hidden_dim=16, attention_dim=8, dropout=0.0)
    return build_decoder(cfg, V, 6).eval()


def _reference_greedy(dec, feats, max_len):
    """A plain argmax loop, one image at a time: what greedy decoding means."""
    out = []
    for b in range(feats.size(0)):
        f = feats[b : b + 1]
        state, tok, words, lps = dec.init_state(f), torch.tensor([START]), [], []
        for _ in range(max_len):
            logits, state, _ = dec.step(f, state, tok)
            lp = torch.log_softmax(logits, -1)[0]
            tok = lp.argmax().view(1)
            lps.append(lp[tok].item())
            if tok.item() == END:
                break
            words.append(tok.item())
        out.append((words, sum(lps)))
    return out


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
