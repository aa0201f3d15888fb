import gc
import weakref

import pytest
import torch

from captionkit.config import DecoderConfig
from captionkit.models.decoders import DECODERS, AttentionRNNDecoder, build_decoder
from captionkit.train.gpu import grouped as fastpath
from captionkit.train.gpu.grouped import group_captions, grouped_loss, vocab_loss
from captionkit.train.losses import caption_loss

V, D, N = 23, 12, 6


def batch(seed: int = 0):
    """3 images with 3, 1 and 4 captions of different lengths, in collate's (C, T) layout."""
    g = torch.Generator().manual_seed(seed)
    counts, lengths = [3, 1, 4], [5, 3, 7, 4, 6, 2, 5, 7]
    image_index = torch.tensor([i for i, c in enumerate(counts) for _ in range(c)])
    tokens = torch.zeros(len(lengths), max(lengths) + 1, dtype=torch.long)
    for row, n in enumerate(lengths):
        tokens[row, 0] = 1
        tokens[row, 1:n] = torch.randint(4, V, (n - 1,), generator=g)
        tokens[row, n] = 2
    feats = torch.randn(len(counts), N, D, generator=g)
    return feats, tokens, image_index


def make_decoder(name: str, seed: int = 0, dropout: float = 0.0):
    torch.manual_seed(seed)
    cfg = DecoderConfig(name=name, embed_dim=8, hidden_dim=10, attention_dim=9, dropout=dropout,
                        num_heads=1)
    return build_decoder(cfg, V, D).double()


# every registered decoder whose class declares the fast path (the equivalence tests loop over
# them: a new decoder that declares it is tested here without a line more)
FAST = [n for n in DECODERS.names() if fastpath.supports(make_decoder(n))]


class FixedMask(torch.nn.Module):
    """Dropout with a fixed mask over the feature axis (the same in the reference's (C, T, E)
    layout and the grouped (T, B, K, E) one), scaled as nn.Dropout scales."""

    def __init__(self, size: int, p: float) -> None:
        super().__init__()
        keep = torch.Generator().manual_seed(3)
        self.mask = (torch.rand(size, generator=keep) >= p).double() / (1 - p)

    def forward(self, x):
        return x * self.mask.to(x.dtype)


def test_the_fast_path_covers_the_rnn_decoders_and_only_declared_classes():
    assert FAST == ["gru", "lstm"]
    assert not fastpath.supports(make_decoder("transformer"))

    class Changed(AttentionRNNDecoder):  # e.g. another attention: its maths is not the parent's
        pass

    changed = Changed(V, D, DecoderConfig(embed_dim=8, hidden_dim=10, attention_dim=9))
    assert not fastpath.supports(changed)


def test_group_captions_places_every_caption_once():
    _, tokens, image_index = batch()
    g = group_captions(tokens, image_index, 3, k=5, t=10)
    assert g.shape == (3, 5, 10)
    seen = 0
    for img in range(3):
        rows = tokens[image_index == img]
        assert torch.equal(g[img, : len(rows), : tokens.size(1)], rows)
        assert g[img, len(rows):].eq(0).all() and g[img, :, tokens.size(1):].eq(0).all()
        seen += len(rows)
    assert seen == len(tokens)
    with pytest.raises(ValueError, match="do not fit"):
        group_captions(tokens, image_index, 3, k=3)


@pytest.mark.parametrize("name", FAST)
@pytest.mark.parametrize("alpha_c,hoist,dropout", [(1.0, False, 0.0), (0.0, False, 0.0),
                                                   (1.0, True, 0.0), (1.0, False, 0.5),
                                                   (1.0, True, 0.5)])
def test_grouped_loss_and_gradients_equal_the_reference(name, alpha_c, hoist, dropout):
    """Also with the context's product hoisted out of the recurrence (the same function,
    multiplied in another order), with the features' own gradient (a trained encoder), and
    with dropout under a fixed mask (applied where the decoder applies it, in training mode)."""
    feats, tokens, image_index = batch()
    feats = feats.double().requires_grad_(True)
    dec = make_decoder(name, dropout=dropout).train()
    if dropout:
        dec.dropout = FixedMask(dec.embed.embedding_dim, dropout)
    logits, alphas = dec(feats, tokens[:, :-1], image_index)
    ref, ref_ce = caption_loss(logits, alphas, tokens[:, 1:], 0, alpha_c)
    ref_grads = torch.autograd.grad(ref, [*dec.parameters(), feats])
    grouped = group_captions(tokens, image_index, 3, k=4, t=tokens.size(1) + 2)
    loss, ce = grouped_loss(dec, feats, grouped, alpha_c, hoist=hoist)
    grads = torch.autograd.grad(loss, [*dec.parameters(), feats])
    torch.testing.assert_close(loss, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ce, ref_ce, rtol=1e-10, atol=1e-12)
    names = [n for n, _ in dec.named_parameters()] + ["feats"]
    for pname, g, r in zip(names, grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-8, atol=1e-10, msg=pname)


@pytest.mark.parametrize("hoist", [False, True])
def test_late_weight_gradients_keep_no_graph_alive(monkeypatch, hoist):
    """The layers' inputs handed to _LateGrad are detached: an input still attached to
    the graph would hold the Function's context (and every tensor it saved) forever, a
    reference cycle through C++ that Python's collector cannot see."""
    feats, tokens, image_index = batch()
    dec = make_decoder("lstm")
    contexts = []
    forward = fastpath._LateGrad.forward

    def recording(ctx, *args):
        contexts.append(weakref.ref(ctx))
        return forward(ctx, *args)
    monkeypatch.setattr(fastpath._LateGrad, "forward", staticmethod(recording))
    loss, ce = grouped_loss(dec, feats.double(), group_captions(tokens, image_index, 3, k=4), 1.0,
                            hoist=hoist)
    loss.backward()
    del loss, ce
    gc.collect()
    assert len(contexts) == 2 and all(ref() is None for ref in contexts)


def test_compiled_vocab_loss_equals_the_eager_one_for_every_length():
    """The compiled vocabulary head (what the GPU step runs) gives the eager value and
    gradients, also after the caption length changes (recompiled with a dynamic length)."""
    torch.manual_seed(0)
    w, b = torch.randn(V, 8, requires_grad=True), torch.randn(V, requires_grad=True)
    head = torch.compile(vocab_loss)
    for t in (5, 7, 9):
        x = torch.randn(t, 3, 4, 8, requires_grad=True)
        targets = torch.randint(0, V, (t, 3, 4))
        targets[-1, 0] = 0  # padding is ignored
        got, want = head(x, w, b, targets), vocab_loss(x, w, b, targets)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
        for g, r in zip(torch.autograd.grad(got, (x, w, b)), torch.autograd.grad(want, (x, w, b)),
                        strict=True):
            torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-5)
