"""What a scored split leaves in a folder (predictions.jsonl, confusion_matrix.png, and a run's training_curves.png),
and `evaluate`: any exported model or Hub id scored on any dataset the package reads, e.g. trained on sst2, tested
on mr."""

from __future__ import annotations

import dataclasses
import json
import logging
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from .errors import ConfigError
from .runfolder import CONFUSION, EVALUATE_LOG, PREDICTIONS, RESULTS, RunRecord, atomic_write

logger = logging.getLogger("xfer_nlp")

# The RunConfig fields that apply to scoring a finished model (`xfer-nlp evaluate --help` lists these alone).
EVALUATE_FIELDS = ("dataset_name", "dataset_config_name", "train_file", "validation_file", "test_file", "data_dir",
                   "text_column", "label_column", "validation_split_ratio", "seed", "max_seq_length", "truncation",
                   "head_tokens", "long_text", "chunk_stride", "per_device_eval_batch_size", "metrics", "output_dir",
                   "overwrite_output_dir")



def write_predictions(path: Path, texts: dict, outputs: dict, label_names) -> None:
    """One JSON line per evaluated text, splits in order and rows in data order: split, index, text, label (gold),
    predicted, score (of the predicted label), scores (every label's probability). `outputs` holds each split's
    (logits, labels) in data order."""
    with atomic_write(path) as tmp, tmp.open("w", encoding="utf-8") as f:
        for split, (logits, labels) in outputs.items():
            probs = torch.softmax(logits.float(), -1).numpy()
            for index, (p, gold) in enumerate(zip(probs, labels.tolist())):
                guess = int(p.argmax())
                f.write(json.dumps({"split": split, "index": index, "text": texts[split][index],
                                    "label": label_names[gold], "predicted": label_names[guess],
                                    "score": float(p[guess]),
                                    "scores": {n: float(v) for n, v in zip(label_names, p)}}, ensure_ascii=False) + "\n")


def warn_unpredicted(metrics: dict, label_names, chosen_on: str) -> None:
    """Warn when the kept model gets no validation example of a class right: choosing on accuracy can
    favour a model that answers only the largest classes (sst5 at 100 examples: three of five classes at recall 0,
    benchmarks/RESULTS.md, "Held-out check")."""
    per_class = (metrics.get("validation") or {}).get("per_class") or {}
    missed = [label_names[int(c)] for c, m in per_class.items() if m["support"] > 0 and m["recall"] == 0]
    if missed:
        logger.warning("On validation the kept model gets no example of %s right (recall 0 for %d of %d classes; "
                       "chosen on %s). Where every class matters, choose on --metric_for_best_model macro_f1, or "
                       "weight the classes with --class_weights balanced.", ", ".join(repr(m) for m in missed),
                       len(missed), len(per_class), chosen_on)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def _save_figure(fig, path: Path) -> None:
    """The figure as a PNG at `path`, written whole or not at all, and its memory freed."""
    fig.tight_layout()
    with atomic_write(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    _pyplot().close(fig)


def plot_confusion(path: Path, metrics: dict, label_names) -> None:
    """One heat map per scored split: counts, rows the true label, columns the predicted one."""
    plt = _pyplot()

    splits = [s for s, m in metrics.items() if "confusion_matrix" in m]
    k = len(label_names)
    size = max(3.2, 0.55 * k + 2)
    fig, axes = plt.subplots(1, len(splits), figsize=(size * len(splits), size), squeeze=False)
    for ax, split in zip(axes[0], splits):
        matrix = np.asarray(metrics[split]["confusion_matrix"])
        ax.imshow(matrix, cmap="Blues")
        for (i, j), n in np.ndenumerate(matrix):
            ax.text(j, i, str(n), ha="center", va="center",
                    color="white" if n > matrix.max() / 2 else "black", fontsize=9)
        ax.set(xticks=range(k), yticks=range(k), xticklabels=label_names, yticklabels=label_names,
               xlabel="predicted", ylabel="true",
               title=f"{split}: accuracy {metrics[split]['accuracy']:.3f}, macro-F1 {metrics[split]['macro_f1']:.3f}")
        plt.setp(ax.get_xticklabels(), rotation=45 if k > 3 else 0, ha="right" if k > 3 else "center")
    _save_figure(fig, path)


def plot_training(path: Path, record: RunRecord) -> None:
    """The training loss by step and, where the run evaluated, the validation figures by step with the kept
    evaluation marked: how the run went, at a glance. Nothing for a run without a training loop (the probe)."""
    if not record.losses:
        return
    plt = _pyplot()
    watched = f"validation_{record.config.get('metric_for_best_model', 'accuracy')}"
    shown = [k for k in dict.fromkeys(("validation_accuracy", watched)) if record.history and k in record.history[0]]
    fig, axes = plt.subplots(1, 1 + bool(shown), figsize=(5.2 * (1 + bool(shown)), 3.6), squeeze=False)
    loss = axes[0][0]
    steps = [r["step"] for r in record.losses]
    loss.plot(steps, [r["loss"] for r in record.losses], marker="o" if len(steps) <= 30 else None, markersize=3)
    loss.set(xlabel="optimizer step", ylabel="training loss",
             title=f"{record.mode}: training loss, mean since the previous point")
    if shown:
        scores = axes[0][1]
        for key in shown:
            scores.plot([r["step"] for r in record.history], [r[key] for r in record.history], marker="o",
                        markersize=3, label=key.removeprefix("validation_").replace("_", "-"))
        if record.best_step is not None:
            scores.axvline(record.best_step, color="grey", linestyle="--", label=f"kept (step {record.best_step})")
        scores.set(xlabel="optimizer step", ylabel="validation", title="validation at each evaluation")
        scores.legend()
    for ax in axes[0]:
        ax.grid(alpha=0.3)
    _save_figure(fig, path)


def label_map(model_labels: dict[int, str], data_labels) -> list[int]:
    """The model's class id for each of the data's label ids, matched by name (case-insensitive)."""
    by_name = {str(name).strip().lower(): int(i) for i, name in model_labels.items()}
    generic = all(str(n).startswith("LABEL_") for n in model_labels.values())
    if generic and len(model_labels) == len(data_labels):
        logger.warning("The model's labels are unnamed (%s); taking them to mean the data's %s in that order.",
                       ", ".join(map(str, model_labels.values())), ", ".join(data_labels))
        return list(range(len(data_labels)))
    missing = [n for n in data_labels if str(n).strip().lower() not in by_name]
    if missing:
        raise ConfigError(f"The data's labels {', '.join(missing)} are not among the model's "
                          f"({', '.join(map(str, model_labels.values()))}). Score it on data with the same labels, or "
                          "rename the data's labels with --label_column / a mapped copy of the data.")
    return [by_name[str(n).strip().lower()] for n in data_labels]


@dataclasses.dataclass
class EvaluationResult:
    """What `evaluate` wrote; `print(result)` shows the metrics table. `results` is its results.json as a dict."""

    output_dir: Path
    model: str
    dataset: str
    metrics: dict
    results: dict = dataclasses.field(repr=False)

    def __str__(self) -> str:
        lines = [f"{self.model} on {self.dataset} -> {self.output_dir}", f"{'split':<12}{'accuracy':>10}{'macro_f1':>10}"]
        lines += [f"{split:<12}{m['accuracy']:>10.4f}{m['macro_f1']:>10.4f}" for split, m in self.metrics.items()]
        return "\n".join(lines)


def evaluate(model: str | Path, config=None, *, all_rows: bool = False, **overrides) -> EvaluationResult:
    """Score an exported model (a run folder, any text-classification folder or Hub id) on a dataset's evaluation
    splits (validation, and test where there is one), writing results.json, predictions.jsonl and
    confusion_matrix.png into `output_dir`.

    >>> xfer_nlp.evaluate("runs/sst2-finetune", dataset_name="mr", output_dir="runs/sst2-finetune-on-mr")

    Keyword arguments are RunConfig fields (EVALUATE_FIELDS: the data flags, the reading of texts, batch size,
    metrics, seed and validation_split_ratio for a data set without a validation split, overwrite_output_dir).
    Data without a validation split of its own (one file) is scored on the seeded hold-out that a run on it
    validates on, so a model and its run are scored on the same rows; `all_rows=True` scores every row instead.
    Texts are read as the run read them (its results.json), unless a reading flag is given. The model's labels
    are matched to the data's by name. No code from the model folder runs (trust_remote_code off). The default
    output_dir is runs/<model>-on-<dataset>.
    """
    from accelerate import Accelerator
    from datasets import DatasetDict

    from . import batches, hub, loop, runfolder
    from . import logs
    from .api import _config_from, check_model_folder, load_model
    from .data import load_text_data
    from .metrics import Scorer

    model = str(model)
    check_model_folder(model)
    cfg = _config_from(config, {**overrides, "mode": "probe"})  # probe: no training settings to require
    if not (overrides.get("output_dir") or (config and config.output_dir)):  # not a run's runs/<data>-<mode>
        data = Path(str(cfg.train_file or cfg.dataset_name)).stem
        cfg = dataclasses.replace(cfg, output_dir=str(Path("runs") / f"{Path(model.rstrip('/')).name}-on-{data}"))
    output_dir = Path(cfg.output_dir)
    runfolder.check(output_dir, cfg.overwrite_output_dir, None)
    lock = runfolder.Lock(output_dir)
    try:
        if cfg.overwrite_output_dir:
            runfolder.invalidate(output_dir)
        accelerator = Accelerator(cpu=not torch.cuda.is_available())
        logs.setup("xfer_nlp", output_dir / EVALUATE_LOG, accelerator.is_main_process)
        data = load_text_data(cfg, hold_out=not all_rows)
        for note in data.notes:
            logger.info("Data: %s%s.", note, " (to score every row instead, --all_rows)"
                        if note.startswith("no validation split: held out") else "")
        tokenizer, classifier, reading = load_model(model)
        # The run's own reading of texts, unless this evaluation names another.
        if any(k in overrides for k in ("max_seq_length", "truncation", "head_tokens", "long_text", "chunk_stride")) \
                or not (Path(model) / RESULTS).is_file():
            reading, _ = batches.choose_reading(cfg, data.splits["validation"]["text"], tokenizer)
        logger.info("Reading texts: %s.", reading.describe())
        to_model = label_map(classifier.config.id2label, data.label_names)
        names = [classifier.config.id2label[i] for i in range(classifier.config.num_labels)]
        splits = [s for s in data.splits if s != "train"]
        tokenized = batches.tokenize(DatasetDict({s: data.splits[s] for s in splits}), tokenizer, reading)
        collator = batches.make_collator(tokenizer, None, accelerator.device.type)
        scorer = Scorer(classifier.config.num_labels, cfg.metric_list)
        outputs, metrics = {}, {}
        for split in splits:
            loader = accelerator.prepare(batches.eval_loader(tokenized[split], collator, cfg.per_device_eval_batch_size))
            logits, labels = loop.predict_logits(accelerator, classifier.to(accelerator.device), loader,
                                                 f"Scoring {split}")
            labels = torch.tensor(to_model)[labels]  # the data's label ids, as the model's class ids
            outputs[split] = (logits, labels)
            metrics[split] = scorer(logits.argmax(-1).numpy(), labels.numpy())
            logger.info("%s: accuracy %.4f, macro-F1 %.4f on %d examples.", split, metrics[split]["accuracy"],
                        metrics[split]["macro_f1"], len(labels))
        results = {"evaluated": model, "dataset": cfg.train_file or cfg.dataset_name, "data_source": data.source,
                   "label_names": names, "split_sizes": {s: len(data.splits[s]) for s in splits},
                   "data_notes": list(data.notes), "metrics": metrics,
                   "reading": dataclasses.asdict(reading),
                   "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        write_predictions(output_dir / PREDICTIONS, {s: data.splits[s]["text"] for s in splits}, outputs, names)
        plot_confusion(output_dir / CONFUSION, metrics, names)
        hub.write_json(output_dir / runfolder.EVALUATION, results)  # last: its presence marks a finished evaluation
        return EvaluationResult(output_dir, model, results["dataset"], metrics, results)
    finally:
        lock.release()
