import pytest
import torch

from captionkit.config import DecoderConfig
from captionkit.models.decoders import DECODERS, build_decoder, list_decoders

CFG = DecoderConfig(embed_dim=8, hidden_dim=16, attention_dim=12, dropout=0.0)


@pytest.mark.parametrize("name", list_decoders())
def test_forward_shapes_and_backward(name):
    torch.manual_seed(0)
    dec = build_decoder(DecoderConfig(name=name, embed_dim=8, hidden_dim=16, attention_dim=12),
                        vocab_size=11, feat_dim=6)
    feats = torch.randn(3, 5, 6, requires_grad=True)
    tokens = torch.randint(0, 11, (3, 4))
    logits, alphas = dec(feats, tokens)
    assert logits.shape == (3, 4, 11) and alphas.shape == (3, 4, 5)
    assert torch.allclose(alphas.sum(-1), torch.ones(3, 4), atol=1e-5)
    logits.sum().backward()
    assert feats.grad is not None and torch.isfinite(feats.grad).all()


@pytest.mark.parametrize("name", list_decoders())
def test_step_reproduces_teacher_forcing(name):
    """forward() and a loop of step() are the same computation (eval mode)."""
    torch.manual_seed(0)
    dec = build_decoder(DecoderConfig(name=name, embed_dim=8, hidden_dim=16, attention_dim=12),
                        vocab_size=11, feat_dim=6).eval()
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
    with pytest.raises(KeyError, match="lstm"):
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
