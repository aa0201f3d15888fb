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
    tokens = torch.randint(0, 11, (3, 4))
    logits, alphas = dec(feats, tokens)
    assert logits.shape == (3, 4, 11) and alphas.shape == (3, 4, 5)
    assert torch.allclose(alphas.sum(-1), torch.ones(3, 4), atol=1e-5)
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
