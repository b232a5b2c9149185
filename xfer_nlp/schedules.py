"""Which parameters train when, and at what learning rate: layer depths, gradual unfreezing, layer-wise decay, STLR.

Every parameter belongs to a depth counted down from the output (families.Layout.depth: the head 0, the top
encoder layer 1, ..., the embeddings L + 1). Both the learning-rate decay (lr * decay**depth) and gradual
unfreezing (stage s trains depths 0..s) read that one number, so they cannot disagree about what "the top" is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.optim.lr_scheduler import LambdaLR

from .families import Layout


def trainable_at_stage(stage: int, names, layout: Layout) -> list[str]:
    """Gradual unfreezing (the loop's thaw): stage 0 trains the head; each later stage adds the next layer down;
    embeddings last."""
    return [n for n in names if layout.depth(n) <= stage]


def frozen_by_freeze_layers(k: int, names, layout: Layout) -> list[str]:
    """`--freeze_layers k`: the embeddings and the bottom k encoder layers (k < 0: all but the top |k|)."""
    bottom = k if k >= 0 else layout.layers + k
    return [n for n in names if layout.depth(n) > layout.layers - bottom]


def frozen_phrase(k: int) -> str:
    """What `--freeze_layers k` freezes, in words (the model card, the report's textbook table)."""
    if k == 0:
        return "the embeddings"
    n = abs(k)
    layers = f"{n} encoder layer" + ("s" if n > 1 else "")
    return f"the embeddings and the bottom {layers}" if k > 0 else f"the embeddings and all but the top {layers}"


def stage_at(step: int, steps_per_epoch: int, interval: float, last_stage: int) -> int:
    """The stage an optimizer step belongs to; a stage lasts `interval` epochs (fractions allowed)."""
    return min(last_stage, int(step // max(1, round(interval * steps_per_epoch))))


@dataclass
class Group:
    depth: int
    label: str
    lr: float
    weight_decay: float
    names: list[str]


def param_groups(model: torch.nn.Module, layout: Layout, lr: float, weight_decay: float, layer_lr_decay: float,
                 trainable: set[str]) -> list[Group]:
    """One group per (depth, decay or not), for every parameter that trains at some point of the run.

    The optimizer gets every group from the start: a parameter still frozen has no gradient, which AdamW skips,
    so it starts its moments the step it thaws. Decay applies to weight matrices only (not to biases and
    LayerNorm weights), as in BERT's recipe.
    """
    named = [(n, p) for n, p in model.named_parameters() if n in trainable]
    groups: dict[tuple[int, bool], Group] = {}
    for n, p in named:
        d, decays = layout.depth(n), p.ndim >= 2
        key = (d, decays)
        if key not in groups:
            groups[key] = Group(d, layout.label(d), lr * layer_lr_decay ** d,
                                weight_decay if decays else 0.0, [])
        groups[key].names.append(n)
    return sorted(groups.values(), key=lambda g: (g.depth, -g.weight_decay))


def slanted_triangular(optimizer, total_steps: int, cut_frac: float, ratio: float) -> LambdaLR:
    """ULMFiT's slanted triangular rate (Howard & Ruder 2018, eq. 3): a short linear rise over cut_frac of the
    steps to the peak, then a long linear fall to peak / ratio."""
    cut = max(1, math.floor(total_steps * cut_frac))

    def factor(t: int) -> float:
        p = t / cut if t < cut else 1 - (t - cut) / max(1, total_steps - cut)
        return (1 + max(p, 0.0) * (ratio - 1)) / ratio

    return LambdaLR(optimizer, factor)


def make_scheduler(name: str, optimizer, total_steps: int, warmup_ratio: float, stlr_ratio: float):
    """transformers' get_scheduler for the schedules it has; our own for stlr (it has none)."""
    # Imported here, not at the top: transformers.optimization imports peft, 1.5 s that predict, report and
    # evaluate (which import this module through modes) never need.
    from transformers import get_scheduler

    if name == "stlr":
        return slanted_triangular(optimizer, total_steps, warmup_ratio, stlr_ratio)
    return get_scheduler(name, optimizer, num_training_steps=total_steps,
                         num_warmup_steps=math.ceil(warmup_ratio * total_steps))
