"""Classification metrics through `evaluate`, with the module this package ships (no Hub download, works offline)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

MODULE = Path(__file__).resolve().parent / "evaluate_modules" / "classification.py"
SCALARS = ("accuracy", "macro_f1")


@lru_cache(maxsize=1)
def _module():
    import evaluate

    # keep_in_memory: no Arrow cache file, so processes of one launch never contend for its lock.
    return evaluate.load(str(MODULE), keep_in_memory=True)


def classification_metrics(predictions, labels, num_labels: int) -> dict:
    """accuracy and macro-F1 (floats), per_class precision/recall/F1/support, and the confusion matrix."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    if len(labels) == 0:
        raise ValueError("no examples to score")
    return _module().compute(predictions=predictions, references=labels, num_labels=num_labels)


def scalars(metrics: dict) -> dict[str, float]:
    """The figures a history row, a log line or a tracker takes."""
    return {k: v for k, v in metrics.items() if isinstance(v, float)}


def class_weight_vector(spec: str, train_labels, num_labels: int):
    """The per-class weights --class_weights asks for, or None for none."""
    import torch

    from .errors import ConfigError

    if spec == "none":
        return None
    if spec == "balanced":
        counts = np.bincount(np.asarray(train_labels), minlength=num_labels)
        return torch.tensor(len(train_labels) / (num_labels * np.maximum(counts, 1)), dtype=torch.float32)
    weights = [float(w) for w in spec.split(",")]
    if len(weights) != num_labels:
        raise ConfigError(f"--class_weights has {len(weights)} weight(s), but the data has {num_labels} classes; give "
                          "one weight per class, in label-id order.")
    return torch.tensor(weights, dtype=torch.float32)
