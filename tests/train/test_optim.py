import pytest
import torch

from captionkit.config import TrainConfig
from captionkit.errors import NonFiniteLossError
from captionkit.train.optim import set_lr, update


def test_set_lr_follows_the_schedule_per_group():
    w = torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.Adam([{"params": [w], "lr": 1.0, "base_lr": 1.0},
                            {"params": [torch.nn.Parameter(torch.ones(1))], "lr": 0.1,
                             "base_lr": 0.1}])
    set_lr(opt, 50, 100, TrainConfig(lr_schedule="cosine"))
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.5, 0.05])


def test_update_clips_and_refuses_nan():
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    before = model.weight.detach().clone()
    loss = (model(torch.ones(1, 2)) * 1e6).sum()
    update(model, opt, loss, TrainConfig(grad_clip=1.0), step=0)
    assert (model.weight - before).norm() <= 1.0 + 1e-5  # clipped to norm 1 (lr 1)
    with pytest.raises(NonFiniteLossError, match="at step 7") as e:
        update(model, opt, loss * float("nan"), TrainConfig(), step=7)
    assert e.value.step == 7
