"""Dropout with cheaper random masks, for training on CPUs.

torch's CPU dropout draws its mask with `bernoulli_`, a float per element, and a BERT step draws 13 of them (after
the embeddings, two per layer). Here the mask comes from 16 random bits per element (two per 32-bit draw), about
a third of the time per mask (benchmarks/RESULTS.md, the levers table: `python benchmarks/levers.py`). The keep
probability is 1 - p rounded to a multiple of 1/65536 (p = 0.1 runs as 0.1000061); FlashAttention rounds p to
1/255 for the same reason.

Only the `nn.Dropout` modules are swapped; the attention probabilities' dropout stays inside SDPA (whose CPU
kernels fall back to their unfused path and `bernoulli_` when they must drop out). An eager attention with these
masks was tried and not kept: faster at 64 tokens, no faster on sst2's short sentences, for more peak RSS (the
same table).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

_LEVELS = 65536  # 16-bit random levels


class _KeepScale(torch.autograd.Function):
    """x * keep * scale, saving only the boolean mask for the backward pass."""

    @staticmethod
    def forward(ctx, x, keep, scale):
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return x * keep * scale

    @staticmethod
    def backward(ctx, grad):
        (keep,) = ctx.saved_tensors
        return grad * keep * ctx.scale, None, None


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    if not training or p == 0.0:
        return x
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")
    drop = round(p * _LEVELS)
    n = x.numel()
    bits = torch.empty((n + 1) // 2, dtype=torch.int32, device=x.device).random_(-2**31, 2**31)
    keep = (bits.view(torch.int16)[:n] >= drop - _LEVELS // 2).view(x.shape)
    return _KeepScale.apply(x, keep, _LEVELS / (_LEVELS - drop))


class Dropout(nn.Dropout):
    def forward(self, x):
        return dropout(x, self.p, self.training)


@contextmanager
def cpu_dropout(model: nn.Module):
    """Train `model` with this module's dropout; on leaving, its modules are stock `nn.Dropout` again."""
    swapped = [m for m in model.modules() if type(m) is nn.Dropout]
    for m in swapped:
        m.__class__ = Dropout
    try:
        yield
    finally:
        for m in swapped:
            m.__class__ = nn.Dropout
