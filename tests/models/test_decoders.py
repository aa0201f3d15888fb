import pytest
import torch
import torch.nn.functional as F

from captionkit.config import DecoderConfig
from captionkit.errors import UnknownNameError
from captionkit.models.attention import ATTENTIONS
from captionkit.models.decoders import (
    DECODERS,
    AttentionRNNDecoder,
    attention_decoders,
    build_decoder,
    fast_path_declared,
    gru_update,
    list_decoders,
    lstm_update,
)

CFG = DecoderConfig(embed_dim=8, hidden_dim=16, attention_dim=12, dropout=0.0)


# every decoder with its default attention, and every RNN decoder with every other mechanism
PAIRS = [(d, DecoderConfig.attention) for d in list_decoders()] + [
    (d, a) for d in attention_decoders() for a in ATTENTIONS.names()
    if a != DecoderConfig.attention]


def _build(name: str, attention: str):
    return build_decoder(DecoderConfig(name=name, attention=attention, embed_dim=8,
                                       hidden_dim=16, attention_dim=12, num_heads=2),
                         vocab_size=11, feat_dim=6)


@pytest.mark.parametrize("name,attention", PAIRS)
def test_forward_shapes_and_backward(name, attention):
    torch.manual_seed(0)
    dec = _build(name, attention)
    feats = torch.randn(3, 5, 6, requires_grad=True)
    tokens = torch.randint(1, 11, (3, 4))  # no <pad>: every step computed
    logits, alphas = dec(feats, tokens)
    assert logits.shape == (3, 4, 11) and alphas.shape == (3, 4, 5)
    total = alphas.sum(-1)
    if attention == "adaptive":  # the sentinel takes the rest
        assert ((total > 0) & (total < 1)).all()
    else:
        assert torch.allclose(total, torch.ones(3, 4), atol=1e-5)
    logits.sum().backward()
    assert feats.grad is not None and torch.isfinite(feats.grad).all()


@pytest.mark.parametrize("name,attention", PAIRS)
def test_step_reproduces_teacher_forcing(name, attention):
    """forward() and a loop of step() are the same computation (eval mode)."""
    torch.manual_seed(0)
    dec = _build(name, attention).eval()
    feats = torch.randn(2, 5, 6)
    tokens = torch.randint(1, 11, (2, 4))  # no padding: every step is computed
    logits, alphas = dec(feats, tokens)
    state = dec.init_state(feats)
    for t in range(4):
        step_logits, state, alpha = dec.step(feats, state, tokens[:, t])
        assert torch.allclose(step_logits, logits[:, t], atol=1e-5)
        assert torch.allclose(alpha, alphas[:, t], atol=1e-6)


def test_registry_names_and_unknown():
    assert {"lstm", "gru"} <= set(list_decoders())
    with pytest.raises(UnknownNameError, match="lstm"):
        DECODERS.get("nope")
    with pytest.raises(ValueError):
        DECODERS.register("lstm")(lambda *a: None)


def test_padding_and_image_index_do_not_change_real_positions():
    torch.manual_seed(0)
    dec = build_decoder(CFG, vocab_size=11, feat_dim=6).eval()
    feats = torch.randn(2, 5, 6)
    tokens = torch.tensor([[1, 5, 6, 2, 0, 0], [1, 7, 2, 0, 0, 0], [1, 4, 4, 4, 9, 2]])
    index = torch.tensor([0, 1, 1])
    logits, alphas = dec(feats, tokens, index)
    for row, img in enumerate(index.tolist()):
        n = int(tokens[row].ne(0).sum())
        alone, a_alone = dec(feats[img : img + 1], tokens[row : row + 1, :n])
        assert torch.allclose(logits[row, :n], alone[0], atol=1e-5)
        assert torch.allclose(alphas[row, :n], a_alone[0], atol=1e-6)
        assert torch.all(alphas[row, n:] == 0)


@pytest.mark.parametrize("cell,update", [(torch.nn.LSTMCell, lstm_update),
                                         (torch.nn.GRUCell, gru_update)])
def test_the_gate_maths_is_the_torch_cell_to_the_bit(cell, update):
    """The decoders' one definition of the gates (also run by the GPU fast path) computes what
    nn.LSTMCell / nn.GRUCell compute, bit for bit at the sizes trained here (hidden sizes that
    fill the CPU's vector lanes; a 16-wide GRU differs in the last bit), so checkpoints and
    numbers are unchanged."""
    torch.manual_seed(0)
    m = cell(12, 256)
    x, h, c = torch.randn(5, 12), torch.randn(5, 256), torch.randn(5, 256)
    xg, hg = F.linear(x, m.weight_ih, m.bias_ih), F.linear(h, m.weight_hh, m.bias_hh)
    got = update(xg, hg, h, c)
    want = m(x, (h, c)) if cell is torch.nn.LSTMCell else (m(x, h), c)
    assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))


def test_fast_path_declarations_are_per_class():
    assert fast_path_declared(build_decoder(DecoderConfig(name="lstm"), 11, 6))
    assert fast_path_declared(build_decoder(DecoderConfig(name="gru"), 11, 6))
    assert not fast_path_declared(build_decoder(DecoderConfig(name="transformer"), 11, 6))

    class Variant(AttentionRNNDecoder):
        pass
    assert not fast_path_declared(Variant(11, 6, CFG))  # inherited, not declared


@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_outputs_are_those_of_the_code_before_the_attention_lab(name):
    """Checkpoints from before the attention registry caption exactly as before: seeded tiny
    models (default, additive attention) give the logits, maps and beam-3 captions recorded
    with that code (tests/fixtures/decoders_v1.json)."""
    import json
    from pathlib import Path

    from captionkit.infer.decoding import beam_search

    want = json.loads((Path(__file__).parents[1] / "fixtures" / "decoders_v1.json")
                      .read_text())[name]
    torch.manual_seed(0)
    dec = build_decoder(DecoderConfig(name=name, embed_dim=8, hidden_dim=16, attention_dim=12,
                                      dropout=0.0), 11, 6).eval()
    g = torch.Generator().manual_seed(1)
    feats = torch.randn(2, 5, 6, generator=g)
    tokens = torch.randint(1, 11, (2, 4), generator=g)
    logits, alphas = dec(feats, tokens)
    torch.testing.assert_close(logits.flatten(), torch.tensor(want["logits"]), rtol=1e-6,
                               atol=1e-7)
    torch.testing.assert_close(alphas.flatten(), torch.tensor(want["alphas"]), rtol=1e-6,
                               atol=1e-7)
    # min_len=0: the decoding rule of that code (it let a beam end at once; captions are now
    # never empty by default)
    hyps = beam_search(dec, feats, start_id=1, end_id=2, beam_size=3, max_len=6, min_len=0)
    assert [[h.tokens for h in hs] for hs in hyps] == want["beam3"]
    torch.testing.assert_close(torch.tensor([[h.score for h in hs] for hs in hyps]),
                               torch.tensor(want["scores"]), rtol=1e-6, atol=1e-6)


def test_updown_is_andersons_two_lstms():
    """One step of updown, read from the paper: attention LSTM over [h2; mean f; E y], attend
    with its new state, language LSTM over [context; h1], logits from h2."""
    torch.manual_seed(0)
    dec = _build("updown", "additive").eval()
    feats, token = torch.randn(2, 5, 6), torch.tensor([3, 7])
    state = dec.init_state(feats)
    assert all(s.abs().sum() == 0 for s in state[:4])  # zero initial states
    logits, new, alpha = dec.step(feats, state, token)
    h2 = torch.zeros(2, 16)
    x1 = torch.cat([h2, feats.mean(1), dec.embed(token)], 1)
    h1, c1 = dec.att_lstm(x1, (torch.zeros(2, 16), torch.zeros(2, 16)))
    ctx, want_alpha = dec.attention(feats, dec.attention.project(feats), h1)
    h2, c2 = dec.lang_lstm(torch.cat([ctx, h1], 1), (h2, torch.zeros(2, 16)))
    torch.testing.assert_close(logits, dec.out(h2))
    torch.testing.assert_close(alpha, want_alpha)
    for got, ref in zip(new[:4], (h1, c1, h2, c2), strict=True):
        torch.testing.assert_close(got, ref)


@pytest.mark.parametrize("name", attention_decoders())
def test_hard_attention_records_its_choices_for_reinforce(name):
    torch.manual_seed(0)
    dec = _build(name, "hard").train()
    feats = torch.randn(3, 5, 6)
    tokens = torch.tensor([[1, 4, 5, 2], [1, 6, 2, 0], [1, 2, 0, 0]])
    extras = {}
    dec(feats, tokens, extras=extras)
    logp, ent = extras["choice_logp"], extras["entropy"]
    assert logp.shape == ent.shape == (3, 4)
    real = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.bool)
    assert (logp[~real] == 0).all() and (ent[~real] == 0).all() and (ent[real] > 0).all()
    assert (logp <= 0).all() and logp.requires_grad
    extras = {}
    _build(name, "additive")(feats, tokens, extras=extras)
    assert extras == {}  # nothing to record for a soft mechanism
