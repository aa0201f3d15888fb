"""Attention mechanisms behind one contract: shapes, weights that sum to one, gradients, each
against a direct reading of its paper's formula; the registry and its errors."""

import pytest
import torch
import torch.nn.functional as F

from captionkit.config import DecoderConfig
from captionkit.errors import ConfigError, UnknownNameError
from captionkit.models.attention import (
    ATTENTIONS,
    AdditiveAttention,
    build_attention,
    fast_path_attention,
)
from captionkit.models.decoders import build_decoder, check_decoder_config, decoder_fields

B, N, D, H = 3, 7, 10, 12


def _mechanism(name: str):
    torch.manual_seed(0)
    return build_attention(DecoderConfig(attention=name, attention_dim=8, num_heads=2), D, H)


def _inputs():
    g = torch.Generator().manual_seed(1)
    return (torch.randn(B, N, D, generator=g).requires_grad_(True),
            torch.randn(B, H, generator=g).requires_grad_(True))


def test_the_registry_lists_the_mechanisms_and_refuses_unknown_ones():
    assert {"additive", "aoa", "general", "scaled_dot"} <= set(ATTENTIONS.names())
    with pytest.raises(UnknownNameError, match="choose one of: additive, aoa, general"):
        ATTENTIONS.get("nope")
    assert isinstance(_mechanism("additive"), AdditiveAttention)  # the default, as before


@pytest.mark.parametrize("name", ATTENTIONS.names())
def test_contract_shapes_weights_and_gradients(name):
    att = _mechanism(name)
    feats, h = _inputs()
    keys = att.project(feats)  # once per image
    ctx, alpha = att(feats, keys, h)
    assert ctx.shape == (B, D) and alpha.shape == (B, N)
    torch.testing.assert_close(alpha.sum(-1), torch.ones(B))
    assert (alpha >= 0).all()
    (ctx.square().sum() + alpha.square().sum()).backward()
    grads = [feats.grad, h.grad, *(p.grad for p in att.parameters())]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_general_is_luongs_h_W_f():
    att = _mechanism("general")
    feats, h = _inputs()
    ctx, alpha = att(feats, att.project(feats), h)
    e = torch.einsum("bh,hd,bnd->bn", h, att.w.weight, feats)  # h^T W f_i
    want = torch.softmax(e, -1)
    torch.testing.assert_close(alpha, want)
    torch.testing.assert_close(ctx, torch.einsum("bn,bnd->bd", want, feats))


def _torch_heads(att, feats, h, heads=2, d=4):
    """q, k, v per head from the mechanism's layers, and torch's own attention over them."""
    q = att.q(h).view(B, heads, 1, d)
    k, v = att.kv(feats).view(B, N, 2, heads, d).permute(2, 0, 3, 1, 4)
    return q, k, F.scaled_dot_product_attention(q, k, v).reshape(B, heads * d)


def test_scaled_dot_is_multi_head_attention_with_the_mean_map():
    att = _mechanism("scaled_dot")
    feats, h = _inputs()
    ctx, alpha = att(feats, att.project(feats), h)
    q, k, want = _torch_heads(att, feats, h)
    d = q.size(-1)
    torch.testing.assert_close(ctx, att.out(want), rtol=1e-5, atol=1e-6)
    maps = torch.softmax(q @ k.transpose(-1, -2) / d ** 0.5, -1)  # (B, heads, 1, N)
    torch.testing.assert_close(alpha, maps.mean(1).squeeze(1))


def test_aoa_gates_an_information_vector_over_the_attended_one():
    att = _mechanism("aoa")
    feats, h = _inputs()
    ctx, alpha = att(feats, att.project(feats), h)
    _, _, attended = _torch_heads(att, feats, h)
    w_i, w_g = att.aoa.weight.chunk(2)  # information rows, gate rows
    b_i, b_g = att.aoa.bias.chunk(2)
    x = torch.cat([attended, h], -1)
    want = (x @ w_i.T + b_i) * torch.sigmoid(x @ w_g.T + b_g)  # i * sigmoid(g)
    torch.testing.assert_close(ctx, want, rtol=1e-5, atol=1e-6)
    assert alpha.shape == (B, N)


def test_only_additive_declares_the_fast_path():
    assert [n for n in ATTENTIONS.names() if fast_path_attention(_mechanism(n))] == ["additive"]

    class Variant(AdditiveAttention):
        pass
    assert not fast_path_attention(Variant(D, H, 8))


def test_decoder_checks_and_fields_follow_the_mechanism():
    check_decoder_config(DecoderConfig(name="lstm", attention="general"))
    with pytest.raises(ConfigError, match="divisible by decoder.num_heads"):
        check_decoder_config(DecoderConfig(name="gru", attention="scaled_dot", attention_dim=10,
                                           num_heads=4))
    with pytest.raises(UnknownNameError, match="attention 'nope'"):
        check_decoder_config(DecoderConfig(name="lstm", attention="nope"))
    with pytest.raises(ConfigError, match="does not apply to the transformer"):
        check_decoder_config(DecoderConfig(name="transformer", attention="general"))
    assert "num_heads" in decoder_fields(DecoderConfig(name="lstm", attention="scaled_dot"))
    assert "num_heads" not in decoder_fields(DecoderConfig(name="lstm"))
    assert "attention_dim" not in decoder_fields(DecoderConfig(name="lstm", attention="general"))


def test_an_rnn_decoder_takes_the_mechanism_by_name():
    dec = build_decoder(DecoderConfig(name="gru", attention="general", embed_dim=8,
                                      hidden_dim=H, dropout=0.0), 11, D)
    assert type(dec.attention).__name__ == "GeneralAttention"
    names = {n for n, _ in dec.named_parameters()}
    assert "attention.w.weight" in names and "attention.feat_proj.weight" not in names
