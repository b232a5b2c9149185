"""Classification metrics computed locally (no Hub download, unlike `evaluate.load`)."""

from __future__ import annotations

import numpy as np


def classification_metrics(predictions, labels, num_labels: int) -> dict[str, float]:
    """accuracy and macro-F1 (the unweighted mean of per-class F1, classes absent from both counted as 0)."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    if len(labels) == 0:
        raise ValueError("no examples to score")
    f1s = []
    for c in range(num_labels):
        tp = np.sum((predictions == c) & (labels == c))
        fp = np.sum((predictions == c) & (labels != c))
        fn = np.sum((predictions != c) & (labels == c))
        f1s.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return {"accuracy": float(np.mean(predictions == labels)), "macro_f1": float(np.mean(f1s))}
