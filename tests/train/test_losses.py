import torch

from captionkit.train.losses import caption_loss


def test_padding_is_ignored_and_penalty_added():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 7)
    alphas = torch.softmax(torch.randn(2, 4, 5), dim=-1)
    targets = torch.tensor([[4, 5, 2, 0], [4, 2, 0, 0]])
    loss, ce = caption_loss(logits, alphas, targets, pad_id=0, alpha_c=0.0)
    mask = targets != 0
    ref = torch.nn.functional.cross_entropy(logits[mask], targets[mask])
    assert torch.allclose(ce, ref) and torch.allclose(loss, ce)
    changed = logits.clone()
    changed[1, 3] += 100.0  # a padded position: must not matter
    assert torch.allclose(caption_loss(changed, alphas, targets, 0, 0.0)[1], ce)
    total, ce2 = caption_loss(logits, alphas, targets, pad_id=0, alpha_c=1.0)
    cover = (alphas * mask.unsqueeze(-1)).sum(1)
    assert torch.allclose(total, ce2 + ((1 - cover) ** 2).mean())
