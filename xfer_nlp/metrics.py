"""Classification metrics through `evaluate`: the module this package ships (offline), plus any --metrics module."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import numpy as np

from .errors import ConfigError

MODULE = Path(__file__).resolve().parent / "evaluate_modules" / "classification.py"


@lru_cache(maxsize=None)
def _load(name: str):
    import evaluate

    # keep_in_memory: no Arrow cache file, so processes of one launch never contend for its lock.
    return evaluate.load(name, keep_in_memory=True)


def classification_metrics(predictions, labels, num_labels: int) -> dict:
    """accuracy and macro-F1 (floats), per_class precision/recall/F1/support, and the confusion matrix."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    if len(labels) == 0:
        raise ValueError("no examples to score")
    return _load(str(MODULE)).compute(predictions=predictions, references=labels, num_labels=num_labels)


def _plain(value):
    """A metric's value as JSON takes it: numpy scalars and arrays become floats, ints and lists."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.floating, float)):
        return float(value)
    if isinstance(value, (np.integer, int)) and not isinstance(value, bool):
        return float(value)
    return value


def _load_extra(name: str):
    try:
        return _load(name)
    except Exception as e:  # evaluate raises FileNotFoundError, ConnectionError, ValueError, ImportError, ...
        offline = any(os.environ.get(v, "0") not in ("0", "", "false") for v in ("HF_HUB_OFFLINE", "HF_EVALUATE_OFFLINE"))
        where = ("This machine is offline (HF_HUB_OFFLINE / HF_EVALUATE_OFFLINE), so a name loads only if evaluate "
                 "has it cached; pass the path of a metric module file (a .py with an evaluate.Metric) instead. "
                 if offline and not Path(name).expanduser().is_file() else "")
        if isinstance(e, ImportError) and "install the following dependencies" in str(e):
            # evaluate lists a module's packages from its import lines: `import datasets, evaluate` asks for 'datasets,'
            where += ("evaluate reads the packages a module needs from its import lines, one package a line: "
                      "write `import a, b` as two lines, and install any package it names that is missing. ")
        raise ConfigError(f"--metrics: could not load the evaluate module '{name}' ({type(e).__name__}: "
                          f"{str(e).splitlines()[0][:200] if str(e) else ''}). {where}A name is an evaluate module "
                          "on the Hub (e.g. matthews_correlation); a path is a local module file. accuracy, "
                          "macro_f1, per-class figures and the confusion matrix are always computed.") from None


class Scorer:
    """Everything a run reports for one split: the shipped module's figures, then those of each --metrics module.

    Extra modules get `predictions` and `references` (class ids). Their numeric outputs join the scalars that
    history rows, trackers and --metric_for_best_model see; a key the shipped module already has is prefixed
    with the module's name (`--metrics accuracy` adds `accuracy_accuracy`). The best is always the largest.
    """

    def __init__(self, num_labels: int, extra: list[str] | tuple[str, ...] = ()):
        self.num_labels = num_labels
        self.extra = [(name, _load_extra(name)) for name in extra]
        # One trial on a perfect toy split: it finds each module's output names, and a module that cannot score
        # this task (e.g. a binary-only metric on three classes) fails now, not after training.
        trial = np.arange(num_labels)
        self.names = tuple(k for k, v in self(trial, trial).items() if isinstance(v, float))

    def __call__(self, predictions, labels) -> dict:
        out = classification_metrics(predictions, labels, self.num_labels)
        for name, module in self.extra:
            try:
                got = module.compute(predictions=np.asarray(predictions), references=np.asarray(labels))
            except Exception as e:
                raise ConfigError(f"--metrics: the module '{name}' failed on this task's labels "
                                  f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}). It must "
                                  f"score class ids 0..{self.num_labels - 1} from predictions and references alone.") from None
            stem = Path(name).stem
            for k, v in (got or {}).items():
                out[f"{stem}_{k}" if k in out else k] = _plain(v)
        return out

    def check_watched(self, metric: str) -> None:
        if metric not in self.names:
            raise ConfigError(f"--metric_for_best_model '{metric}' is not among the computed metrics "
                              f"({', '.join(self.names)}). Choose one of them, or add the module that computes it "
                              "with --metrics.")


def scalars(metrics: dict) -> dict[str, float]:
    """The figures a history row, a log line or a tracker takes."""
    return {k: v for k, v in metrics.items() if isinstance(v, float)}


def class_weight_vector(spec: str, train_labels, num_labels: int):
    """The per-class weights --class_weights asks for, or None for none."""
    import torch

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
