"""The one EMA update: parameters averaged, buffers copied; and why copying buffers changes
nothing for the demo teacher (its buffers are constants that training never writes)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from distill3d.models.load import init_generator
from distill3d.training.demo.teacher import DemoTeacherConfig, losses, step_batch
from distill3d.training.ema import update_ema


class WithBuffer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(3))
        self.register_buffer("running", torch.zeros(3))


def test_parameters_are_averaged_and_buffers_copied():
    ema, model = WithBuffer(), WithBuffer()
    with torch.no_grad():
        model.weight.fill_(1.0)
        model.running.fill_(5.0)
    update_ema(ema, model, beta=0.75)
    assert torch.allclose(ema.weight, torch.full((3,), 0.25))
    assert torch.equal(ema.running, torch.full((3,), 5.0))
    assert not ema.weight.requires_grad or ema.weight.grad is None
    update_ema(ema, model, beta=0.0)
    assert torch.equal(ema.weight, model.weight.detach())


def test_the_arithmetic_is_the_demo_teachers():
    """``ema.lerp_(p, 1 - beta)`` exactly: a running demo teacher resumes bit for bit."""
    ema, model = WithBuffer(), WithBuffer()
    with torch.no_grad():
        ema.weight.copy_(torch.tensor([0.1, -2.0, 3.3]))
        model.weight.copy_(torch.tensor([0.7, 0.2, -1.1]))
    expected = ema.weight.detach().clone().lerp_(model.weight.detach(), 1 - 0.998)
    update_ema(ema, model, beta=0.998)
    assert torch.equal(ema.weight.detach(), expected)


def test_mismatched_architectures_are_refused():
    bigger = WithBuffer()
    bigger.extra = nn.Parameter(torch.zeros(3))
    with pytest.raises(ValueError):
        update_ema(WithBuffer(), bigger, beta=0.5)


@pytest.mark.parametrize("preset", ["demo", "demo-face"])
def test_demo_teacher_buffers_are_constants(preset):
    """Filters, constant noise, the label std and w_avg (set only on the shipped copy): a
    training step leaves them as initialised, so copying them into the EMA copies equal values."""
    teacher = init_generator(preset, seed=0).train().requires_grad_(True)
    ema = copy.deepcopy(teacher).eval().requires_grad_(False)
    before = {name: b.clone() for name, b in teacher.named_buffers()}
    optimizer = torch.optim.Adam(teacher.parameters(), lr=1e-2)
    terms = losses(teacher, *step_batch(DemoTeacherConfig(batch_size=1), 0), feature_weight=4.0)
    sum(terms.values()).backward()
    optimizer.step()
    after = dict(teacher.named_buffers())
    assert all(torch.equal(before[name], after[name]) for name in before)
    ema_buffers = dict(ema.named_buffers())
    assert all(torch.equal(ema_buffers[name], after[name]) for name in before)
