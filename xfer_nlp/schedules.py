"""Which parameters train when, and at what learning rate: layer depths, gradual unfreezing, layer-wise decay, STLR.

Every parameter belongs to a depth counted down from the output: the head (classifier, and the pooler that feeds
it) is depth 0, the top encoder layer depth 1, ..., the bottom layer depth L, the embeddings depth L + 1. Both the
learning-rate decay (lr * decay**depth) and gradual unfreezing (stage s trains depths 0..s) read that one number,
so they cannot disagree about what "the top" is.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
from torch.optim.lr_scheduler import LambdaLR
from transformers import get_scheduler

# transformers names encoder blocks `...layer.3.` (BERT, RoBERTa, DistilBERT's `transformer.layer.3.`) or
# `...layers.3.` (ModernBERT and most decoders); peft keeps those names inside its own prefix.
_LAYER = re.compile(r"\.layers?\.(\d+)\.")


def num_layers(names) -> int:
    """Encoder blocks in a model, counted from its parameter names."""
    found = {int(m.group(1)) for n in names if (m := _LAYER.search(n))}
    return max(found) + 1 if found else 0


def depth(name: str, layers: int) -> int:
    """0 for the head, 1 for the top encoder layer, ..., `layers` for the bottom one, `layers + 1` for embeddings."""
    if m := _LAYER.search(name):
        return layers - int(m.group(1))
    if "embed" in name:
        return layers + 1
    return 0


def depth_label(d: int, layers: int) -> str:
    if d == 0:
        return "head"
    if d == layers + 1:
        return "embeddings"
    return f"layer.{layers - d}"


def trainable_at_stage(stage: int, names, layers: int) -> list[str]:
    """Gradual unfreezing: stage 0 trains the head; each later stage adds the next layer down; embeddings last."""
    return [n for n in names if depth(n, layers) <= stage]


def frozen_by_freeze_layers(k: int, names, layers: int) -> list[str]:
    """`--freeze_layers k`: the embeddings and the bottom k encoder layers (k < 0: all but the top |k|)."""
    bottom = k if k >= 0 else layers + k
    return [n for n in names if depth(n, layers) > layers - bottom]


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


def param_groups(model: torch.nn.Module, lr: float, weight_decay: float, layer_lr_decay: float,
                 trainable: set[str]) -> list[Group]:
    """One group per (depth, decay or not), for every parameter that trains at some point of the run.

    The optimizer gets every group from the start: a parameter still frozen has no gradient, which AdamW skips,
    so it starts its moments the step it thaws. Decay applies to weight matrices only (not to biases and
    LayerNorm weights), as in BERT's recipe.
    """
    named = [(n, p) for n, p in model.named_parameters() if n in trainable]
    layers = num_layers(n for n, _ in model.named_parameters())
    groups: dict[tuple[int, bool], Group] = {}
    for n, p in named:
        d, decays = depth(n, layers), p.ndim >= 2
        key = (d, decays)
        if key not in groups:
            groups[key] = Group(d, depth_label(d, layers), lr * layer_lr_decay ** d,
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
    if name == "stlr":
        return slanted_triangular(optimizer, total_steps, warmup_ratio, stlr_ratio)
    return get_scheduler(name, optimizer, num_training_steps=total_steps,
                         num_warmup_steps=math.ceil(warmup_ratio * total_steps))
