"""The paper's update rule and learning-rate schedule (sec. 5)."""

from __future__ import annotations

import pytest
import torch

from alexnet_mp.errors import UserError
from alexnet_mp.train.optim import PaperSGD, PlateauSchedule, build_optimizer


def _grads(steps: int, shape=(7, 5)) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(steps)]


def test_paper_sgd_follows_the_printed_update():
    w0 = torch.randn(7, 5, dtype=torch.float64)
    p = torch.nn.Parameter(w0.clone())
    opt = PaperSGD([p], lr=0.01, momentum=0.9, weight_decay=5e-4)
    w, v = w0.clone(), torch.zeros_like(w0)
    for grad in _grads(5):
        p.grad = grad.clone()
        opt.step()
        v = 0.9 * v - 0.0005 * 0.01 * w - 0.01 * grad
        w = w + v
    torch.testing.assert_close(p.detach(), w, rtol=1e-12, atol=1e-12)


def test_paper_rule_equals_pytorch_sgd_at_a_constant_rate_and_differs_after_a_drop():
    w0 = torch.randn(7, 5, dtype=torch.float64)
    params = [torch.nn.Parameter(w0.clone()) for _ in range(2)]
    opts = [build_optimizer([params[0]], lr=0.01, momentum=0.9, weight_decay=5e-4, rule="paper"),
            build_optimizer([params[1]], lr=0.01, momentum=0.9, weight_decay=5e-4, rule="pytorch")]
    for grad in _grads(6):
        for p, o in zip(params, opts):
            p.grad = grad.clone()
            o.step()
    torch.testing.assert_close(params[0], params[1], rtol=1e-10, atol=1e-12)
    for o in opts:
        o.param_groups[0]["lr"] = 0.001
    for grad in _grads(1):
        for p, o in zip(params, opts):
            p.grad = grad.clone()
            o.step()
    assert not torch.allclose(params[0], params[1], rtol=1e-6, atol=0)


def test_unknown_rule_is_a_user_error():
    with pytest.raises(UserError, match="optim.rule"):
        build_optimizer([torch.nn.Parameter(torch.zeros(1))], lr=0.1, momentum=0.9, weight_decay=0, rule="adam")


def _schedule(**kw):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.01)
    return PlateauSchedule(opt, **kw)


def test_rate_drops_tenfold_after_patience_epochs_without_improvement_at_most_max_drops_times():
    s = _schedule(patience=1, max_drops=2)
    errors = [0.9, 0.8, 0.8, 0.8, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7]
    rates = []
    for e in errors:
        s.step(e)
        s.begin_step(1000)
        rates.append(s.lr)
    assert rates == pytest.approx([0.01, 0.01, 0.01, 0.001, 0.001, 0.001, 0.0001, 0.0001, 0.0001, 0.0001, 0.0001])
    assert s.drops == 2


def test_warmup_ramps_linearly_and_state_round_trips():
    s = _schedule(warmup_steps=4)
    got = []
    for step in range(1, 7):
        s.begin_step(step)
        got.append(s.lr)
    assert got == pytest.approx([0.0025, 0.005, 0.0075, 0.01, 0.01, 0.01])
    s.step(0.5), s.step(0.6), s.step(0.6), s.step(0.6)
    t = _schedule(warmup_steps=4)
    t.load_state_dict(s.state_dict())
    t.begin_step(10)
    s.begin_step(10)
    assert t.lr == s.lr == pytest.approx(0.001)
