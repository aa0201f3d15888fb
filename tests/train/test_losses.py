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


def test_hard_attention_loss_is_reinforce_with_a_baseline_and_entropy():
    from captionkit.train.losses import hard_attention_loss

    torch.manual_seed(0)
    logits = torch.randn(2, 3, 7)
    targets = torch.tensor([[4, 5, 2], [4, 2, 0]])
    mask = targets != 0
    choice = torch.log(torch.rand(2, 3)).requires_grad_(True)
    entropy = torch.rand(2, 3).requires_grad_(True)
    term, reward = hard_attention_loss(logits, targets, 0, choice, entropy, baseline=-5.0,
                                       reinforce=1.0, entropy_weight=0.1)
    lp = torch.log_softmax(logits, -1).gather(2, targets.unsqueeze(-1)).squeeze(-1)
    r = (lp * mask).sum(1)  # each caption's log-likelihood
    want = (-((r - -5.0) * (choice * mask).sum(1)).sum()
            - 0.1 * (entropy * mask).sum()) / mask.sum()
    torch.testing.assert_close(term, want)
    torch.testing.assert_close(reward, r.mean())
    term.backward()
    # a caption better than the baseline makes its choices more likely (gradient descent)
    better = r > -5.0
    assert better.any() and not better.all()  # one caption each side of the baseline
    assert (choice.grad[better][mask[better]] < 0).all()
    assert (choice.grad[~better][mask[~better]] > 0).all()
    assert (choice.grad[~mask] == 0).all() and (entropy.grad[mask] < 0).all()


def test_a_sentinel_mechanism_is_penalised_over_the_regions_only():
    """Adaptive maps sum to 1 - beta: the coverage penalty reads them renormalised over the
    regions, so using the sentinel (beta > 0) costs nothing by itself."""
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 7)
    targets = torch.tensor([[4, 5, 2, 0], [4, 2, 0, 0]])
    maps = torch.softmax(torch.randn(2, 4, 5), dim=-1)
    looked = maps * 0.3  # beta = 0.7 at every word
    plain = caption_loss(logits, maps, targets, 0, 1.0)[0]
    torch.testing.assert_close(caption_loss(logits, looked, targets, 0, 1.0, sentinel=True)[0],
                               plain)
    assert caption_loss(logits, looked, targets, 0, 1.0)[0] > plain  # raw maps: beta costs
