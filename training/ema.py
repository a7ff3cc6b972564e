"""The exponential moving average of a model's weights: one update for every training loop.

Both the distillation loop and the demo teacher save and evaluate an EMA copy of the model they
train. The semantics are StyleGAN2-ADA's: parameters are averaged, buffers are copied. Buffers are
state the model keeps rather than learns (resampling filters, constant noise, running averages);
averaging them would blend a constant with itself at best and lag a statistic at worst.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import TrainConfig


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, beta: float) -> None:
    """``ema = beta * ema + (1 - beta) * model`` for every parameter; buffers copied from ``model``.

    ``beta = 0`` makes ``ema`` an exact copy. The two modules must have the same architecture
    (parameters and buffers are paired in order, strictly). The arithmetic is
    ``ema.lerp_(model, 1 - beta)``: the demo teacher's runs were trained with exactly this, so its
    interrupted runs resume bit for bit.
    """
    for p_ema, p in zip(ema.parameters(), model.parameters(), strict=True):
        p_ema.lerp_(p.detach(), 1 - beta)
    for b_ema, b in zip(ema.buffers(), model.buffers(), strict=True):
        b_ema.copy_(b)


def ema_beta(config: TrainConfig, batch_size: int, images_seen: int) -> float:
    """Per-step EMA decay from a half-life in images, ramped up early on (StyleGAN2-ADA)."""
    half_life = config.ema_kimg * 1000
    if config.ema_rampup is not None:
        half_life = min(half_life, images_seen * config.ema_rampup)
    return 0.5 ** (batch_size / max(half_life, 1e-8))
