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
    CellView,
    build_attention,
    fast_path_attention,
    sentinel_beta,
)
from captionkit.models.decoders import build_decoder, check_decoder_config, decoder_fields

B, N, D, H, X = 3, 7, 10, 12, 9  # X: the width of the cell's input


def _mechanism(name: str, **kw):
    torch.manual_seed(0)
    cfg = DecoderConfig(attention=name, attention_dim=8, num_heads=2, **kw)
    return build_attention(cfg, D, H, X)


def _inputs():
    g = torch.Generator().manual_seed(1)
    return (torch.randn(B, N, D, generator=g).requires_grad_(True),
            torch.randn(B, H, generator=g).requires_grad_(True))


def _cell():
    g = torch.Generator().manual_seed(2)
    return CellView(torch.randn(B, X, generator=g), torch.randn(B, H, generator=g),
                    torch.randn(B, H, generator=g))


def test_the_registry_lists_the_mechanisms_and_refuses_unknown_ones():
    assert {"adaptive", "additive", "aoa", "general", "hard", "scaled_dot"} <= set(
        ATTENTIONS.names())
    with pytest.raises(UnknownNameError, match="choose one of: adaptive, additive, aoa, gen"):
        ATTENTIONS.get("nope")
    assert isinstance(_mechanism("additive"), AdditiveAttention)  # the default, as before


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("name", ATTENTIONS.names())
def test_contract_shapes_weights_and_gradients(name, training):
    att = _mechanism(name).train(training)
    assert att.QUERY in ("previous", "current")
    feats, h = _inputs()
    keys = att.project(feats)  # once per image
    ctx, alpha = att(feats, keys, h, _cell())
    assert ctx.shape == (B, att.context_dim) and alpha.shape == (B, N)
    total = alpha.sum(-1)
    if getattr(att, "SENTINEL", False):  # the sentinel takes the rest of the weight
        assert ((total > 0) & (total < 1)).all()
    else:
        torch.testing.assert_close(total, torch.ones(B))
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


def test_adaptive_is_lus_sentinel_and_extended_softmax():
    att = _mechanism("adaptive")
    feats, h = _inputs()
    cell = _cell()
    ctx, alpha = att(feats, att.project(feats), h, cell)
    v = torch.relu(feats @ att.values.weight.T + att.values.bias)  # v_i = ReLU(W_a f_i)
    s = torch.sigmoid(cell.x @ att.gate_x.weight.T + att.gate_x.bias
                      + cell.h_prev @ att.gate_h.weight.T) * torch.tanh(cell.memory)
    w, b = att.score.weight.squeeze(0), att.score.bias
    wg_h = (h @ att.query.weight.T).unsqueeze(1)  # W_g h_t
    z = torch.tanh(v @ att.keys.weight.T + att.keys.bias + wg_h) @ w + b  # (B, N)
    zs = torch.tanh((s @ att.sentinel_key.weight.T).unsqueeze(1) + wg_h) @ w + b  # (B, 1)
    ext = torch.softmax(torch.cat([z, zs], 1), 1)  # alpha-hat over N + 1
    beta = ext[:, -1]
    torch.testing.assert_close(alpha, ext[:, :-1])
    torch.testing.assert_close(sentinel_beta(alpha), beta)
    want = beta[:, None] * s + (1 - beta[:, None]) * torch.einsum(
        "bn,bnh->bh", torch.softmax(z, 1), v)  # c-hat = beta s + (1 - beta) c
    torch.testing.assert_close(ctx, want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="reads the cell"):
        att(feats, att.project(feats), h)


def test_hard_attention_samples_one_region_or_the_expected_context():
    att = _mechanism("hard")
    feats, h = _inputs()
    keys = att.project(feats)
    att.eval()
    ctx, alpha = att(feats, keys, h)
    pick = alpha.argmax(1)
    torch.testing.assert_close(ctx, feats[torch.arange(B), pick])  # test time: argmax region
    att.decode = "expected"
    torch.testing.assert_close(att(feats, keys, h)[0], torch.einsum("bn,bnd->bd", alpha, feats))
    att.train()
    torch.manual_seed(0)
    feats = torch.randn(400, N, D)
    h = torch.randn(400, H)
    record = []
    ctx, alpha = att(feats, att.project(feats), h, record=record)
    expected = torch.einsum("bn,bnd->bd", alpha, feats)
    used_expected = torch.isclose(ctx, expected, atol=1e-6).all(1)
    sampled = (ctx.unsqueeze(1) == feats).all(-1)  # (B, N) the context is one region's feature
    assert ((sampled.sum(1) == 1) | used_expected).all()
    assert 0.4 < used_expected.float().mean() < 0.6  # the paper's 0.5 chance
    logp, entropy = record[0]
    assert logp.shape == entropy.shape == (400,)
    assert (logp[used_expected] == 0).all() and (logp[~used_expected] < 0).all()
    chosen = sampled[~used_expected].float().argmax(1)
    torch.testing.assert_close(logp[~used_expected].exp(),
                               alpha[~used_expected].gather(1, chosen[:, None]).squeeze(1))
    torch.testing.assert_close(entropy, -(alpha * alpha.log()).sum(1))


def test_only_additive_declares_the_fast_path():
    assert [n for n in ATTENTIONS.names() if fast_path_attention(_mechanism(n))] == ["additive"]

    class Variant(AdditiveAttention):
        pass
    assert not fast_path_attention(Variant(D, H, 8))


def test_hard_decode_choice_is_checked():
    with pytest.raises(ConfigError, match="hard_decode"):
        DecoderConfig(hard_decode="sample")


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
