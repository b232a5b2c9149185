"""What a scored split leaves in a folder (predictions.jsonl, confusion_matrix.png, and a run's training_curves.png),
and `evaluate`: any exported model or Hub id scored on any dataset the package reads, e.g. trained on sst2, tested
on mr."""

from __future__ import annotations

import dataclasses
import json
import logging
from datetime import datetime, timezone
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from .errors import ConfigError
from .runfolder import CONFUSION, EVALUATE_LOG, PREDICTIONS, RESULTS, RunRecord, atomic_write, of_kind, recorded

if TYPE_CHECKING:
    from .config import RunConfig

logger = logging.getLogger("xfer_nlp")

# The RunConfig fields that apply to scoring a finished model (`xfer-nlp evaluate --help` lists these alone).
EVALUATE_FIELDS = ("dataset_name", "dataset_config_name", "train_file", "validation_file", "test_file", "data_dir",
                   "text_column", "text_pair_column", "label_column", "validation_split_ratio", "seed",
                   "max_seq_length", "truncation", "head_tokens", "long_text", "chunk_stride",
                   "per_device_eval_batch_size", "metrics", "output_dir", "overwrite_output_dir", "cv_folds", "cv_fold")
# How a run cut its data into the rows it trained on and the rows it held out. A run's export scored on that same
# data is cut the same way unless a flag says otherwise: a hold-out drawn with another seed (a compare cell's seed 0
# against evaluate's default 42), or without the run's cross-validation folds, holds rows the model trained on.
SPLIT_FIELDS = ("seed", "validation_split_ratio", "cv_folds", "cv_fold")
# Which columns a run read as its text, second text and label: on that same data its export reads them so too.
COLUMN_FIELDS = ("text_column", "text_pair_column", "label_column")
DATA_FIELDS = ("dataset_name", "dataset_config_name", "train_file", "validation_file", "test_file")


def write_predictions(path: Path, splits, outputs: dict, label_names) -> None:
    """One JSON line per evaluated text, splits in order and rows in data order: split, index, text (and text_pair
    for pairs), label (gold), predicted, score (of the predicted label), scores (every label's probability).
    `splits` holds the data's splits (text columns), `outputs` each scored split's (logits, labels) in data order."""
    from .data import text_pairs

    with atomic_write(path) as tmp, tmp.open("w", encoding="utf-8") as f:
        for split, (logits, labels) in outputs.items():
            probs = torch.softmax(logits.float(), -1).numpy()
            texts, pairs = splits[split]["text"][:], text_pairs(splits[split])
            for index, (p, gold) in enumerate(zip(probs, labels.tolist())):
                guess = int(p.argmax())
                pair = {"text_pair": pairs[index]} if pairs is not None else {}
                f.write(json.dumps({"split": split, "index": index, "text": texts[index], **pair,
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


def pyplot():
    """matplotlib's pyplot, drawing to files only (never a window)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plain_log_ticks(axis) -> None:
    """A log axis labelled plainly at 1, 2 and 5 x 10^k (0.5, 1, 2, 5, ... 1,000): matplotlib's own labels read 4×10¹
    where the values span a decade or two, and print every minor tick there, over each other. Call it after the
    data are drawn: an axis that spans less than a decade (65 to 145 s) would get one label of 1, 2 and 5, so it
    is labelled at round steps instead (80, 100, 120, 140)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

    low, high = axis.get_view_interval()
    axis.set_major_locator(LogLocator(subs=(1, 2, 5)) if high > 10 * low else MaxNLocator(nbins=6, steps=[1, 2, 5, 10]))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,g}"))
    axis.set_minor_formatter(NullFormatter())


def save_figure(fig, path: Path) -> None:
    """The figure as a PNG at `path`, written whole or not at all, and its memory freed. The image is cut to what
    is drawn, a legend placed beside the axes included."""
    fig.tight_layout()
    with atomic_write(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png", bbox_inches="tight")
    pyplot().close(fig)


def plot_confusion(path: Path, metrics: dict, label_names) -> None:
    """One heat map per scored split: counts, rows the true label, columns the predicted one."""
    plt = pyplot()

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
    save_figure(fig, path)


def plot_training(path: Path, record: RunRecord) -> None:
    """The training loss by step and, where the run evaluated, the validation figures by step with the kept
    evaluation marked: how the run went, at a glance. Nothing for a run without a training loop (the probe)."""
    if not record.losses:
        return
    plt = pyplot()
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
    save_figure(fig, path)


def class_names(config, source: str) -> list[str]:
    """A classifier's class names in class-id order, checked: config.json's id2label must name the ids 0..N-1, each
    class by its own name. A damaged or hand-edited one ended predict in a KeyError, or labelled two classes'
    predictions alike."""
    labels = dict(config.id2label or {})
    if sorted(labels) != list(range(config.num_labels)):
        raise ConfigError(f"'{source}' has a config.json whose id2label names the class ids "
                          f"{', '.join(map(str, sorted(labels))) or 'none'}, where its {config.num_labels} classes are "
                          f"0 to {config.num_labels - 1} (a damaged or hand-edited config). Fix id2label and label2id "
                          "to name each class id once.")
    names = [str(labels[i]) for i in range(config.num_labels)]
    seen = {}
    for i, name in enumerate(names):
        twin = seen.setdefault(name, i)
        if twin != i:
            raise ConfigError(f"'{source}' has a config.json whose id2label names classes {twin} and {i} alike "
                              f"({name!r}): predictions of the two could not be told apart. Give each class its own "
                              "name in id2label and label2id.")
    return names


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


def metrics_markdown(metrics: dict) -> str:
    """Accuracy and macro-F1 per scored split as a Markdown table: what a notebook shows for a result."""
    return "\n".join(["| split | accuracy | macro-F1 |", "|---|---|---|"] +
                     [f"| {split} | {m['accuracy']:.4f} | {m['macro_f1']:.4f} |" for split, m in metrics.items()])


@dataclasses.dataclass
class EvaluationResult:
    """What `evaluate` wrote; `print(result)` shows the metrics table, as does a notebook. `results` is its
    results.json as a dict."""

    output_dir: Path
    model: str
    dataset: str
    metrics: dict
    results: dict = dataclasses.field(repr=False)

    def __str__(self) -> str:
        lines = [f"{self.model} on {self.dataset} -> {self.output_dir}", f"{'split':<12}{'accuracy':>10}{'macro_f1':>10}"]
        lines += [f"{split:<12}{m['accuracy']:>10.4f}{m['macro_f1']:>10.4f}" for split, m in self.metrics.items()]
        return "\n".join(lines)

    def _repr_markdown_(self) -> str:  # Jupyter renders this where the plain repr would show the folder alone
        return f"`{self.model}` on **{self.dataset}** → `{self.output_dir}`\n\n{metrics_markdown(self.metrics)}"


def _same_value(given, ran) -> bool:
    """A data flag's two values, given now and recorded by the run, name the same data: equal, or two paths to one
    file or folder."""
    if given == ran:
        return True
    if not (isinstance(given, str) and isinstance(ran, str)):
        return False
    a, b = Path(given).expanduser(), Path(ran).expanduser()
    return a.exists() and b.exists() and a.resolve() == b.resolve()


def _split_of_the_run(model: str, cfg: RunConfig) -> tuple[dict, dict]:
    """The run's SPLIT_FIELDS and COLUMN_FIELDS where `cfg` names the data that the run in folder `model` trained on
    (its results.json); ({}, {}) for other data, and for a model that is not a run's export."""
    run = recorded(Path(model).expanduser(), "config")
    if not isinstance(run, dict) or not all(_same_value(getattr(cfg, k), run.get(k)) for k in DATA_FIELDS):
        return {}, {}
    from .config import FIELD_TYPES

    split = {k: run[k] for k in SPLIT_FIELDS if k in run}
    columns = {k: run[k] for k in COLUMN_FIELDS if k in run}
    for fields, kind, unknown in ((split, "a number", "rows the run held out"),
                                  (columns, "a column name", "columns the run read")):
        bad = [k for k, v in fields.items() if not of_kind(v, FIELD_TYPES[k])]
        if bad:
            raise ConfigError(f"'{Path(model) / RESULTS}' is damaged: its {', '.join(bad)} is not {kind}, so the "
                              f"{unknown} are unknown. Re-run the export.")
    return split, columns


def _cut_as_the_run(model: str, config, overrides: dict, all_rows: bool) -> tuple[RunConfig, dict, dict]:
    """The evaluation's config, taking the run's cut of its own data and the columns it read there
    (_split_of_the_run) where no flag names them; that cut; and the flags given that cut the run's data otherwise."""
    from .config import RunConfig, resolve, with_options

    applied = with_options(config, overrides, EVALUATE_FIELDS, "evaluate, which scores a finished model")
    cfg = resolve(dataclasses.replace(applied, mode="probe"))  # probe: no training settings to require
    if all_rows and cfg.cv_folds:
        raise ConfigError("--all_rows scores every row and --cv_folds one fold of them: pass one of the two.")
    default = RunConfig()
    given = set(overrides) | ({f.name for f in dataclasses.fields(RunConfig)
                               if getattr(config, f.name) != getattr(default, f.name)} if config else set())
    run_split, columns = _split_of_the_run(model, cfg)
    if all_rows:  # every row: no fold is cut out
        run_split = {k: v for k, v in run_split.items() if k not in ("cv_folds", "cv_fold")}
    as_the_run = {k: v for k, v in {**run_split, **columns}.items() if k not in given}
    if as_the_run:
        cfg = resolve(dataclasses.replace(applied, **as_the_run, mode="probe"))
    return cfg, run_split, {k: v for k, v in run_split.items() if k in given and getattr(cfg, k) != v}


def _pairs_mismatch(model: str, pairs: bool) -> str:
    if pairs:
        ran = recorded(Path(model).expanduser(), "config")
        column = ran.get("text_pair_column") if isinstance(ran, dict) else None
        return (f"'{model}' was trained on text pairs" + (f" (its run's --text_pair_column {column})"
                                                         if isinstance(column, str) else "") +
                "; name the column of each example's second text in this data with --text_pair_column.")
    return (f"'{model}' was trained on single texts, not pairs: leave --text_pair_column out, or score a model "
            "trained on pairs.")


def _say_how_cut(notes: list[str], cfg: RunConfig, run_split: dict, otherwise: dict) -> list[str]:
    """The data notes, and what scoring a run on its own data means: a note where the rows are the ones it held out,
    a warning where they may include rows it trained on."""
    cut = any(n.startswith(("no validation split: held out", "cross-validation")) for n in notes)
    if cut and otherwise:
        logger.warning("This is the data the run trained on, cut otherwise than the run cut it (%s where the run "
                       "had %s): some scored rows may be rows the model trained on, which inflates its figures. "
                       "Leave those flags out to score the rows the run held out.",
                       ", ".join(f"--{k} {getattr(cfg, k)}" for k in otherwise), ", ".join(map(str, otherwise.values())))
    elif run_split and any(n.startswith("no validation split: scoring all") for n in notes):
        logger.warning("These are the rows the run trained on: scoring every one of them (--all_rows) measures how "
                       "well it fits them, not how it generalises. Leave --all_rows out to score the rows the run "
                       "held out.")
    elif cut and run_split:
        flags = [f"--{k} {v}" for k, v in run_split.items() if run_split.get("cv_folds") or not k.startswith("cv_")]
        notes.append(f"the run's own data, cut as the run cut it ({', '.join(flags)}), so no scored row is one it "
                     "trained on")
    return notes


def evaluate(model: str | Path, config=None, *, all_rows: bool = False, data=None, **overrides) -> EvaluationResult:
    """Score an exported model (a run folder, any text-classification folder or Hub id) on a dataset's evaluation
    splits (validation, and test where there is one), writing results.json, predictions.jsonl and
    confusion_matrix.png into `output_dir`.

    >>> xfer_nlp.evaluate("runs/sst2-finetune", dataset_name="mr", output_dir="runs/sst2-finetune-on-mr")

    Keyword arguments are RunConfig fields (EVALUATE_FIELDS: the data flags, the reading of texts, batch size,
    metrics, seed and validation_split_ratio for a data set without a validation split, overwrite_output_dir).
    Data without a validation split of its own (one file) is scored on the seeded hold-out that a run on it
    validates on, so a model and its run are scored on the same rows; `all_rows=True` scores every row instead.
    A run's export scored on the run's own data is cut as the run cut it (its seed, hold-out ratio and
    cross-validation fold, from its results.json) unless those are given; given otherwise, a warning says that
    scored rows may be training rows. On that data the run's text, pair and label columns are the defaults too.
    Texts are read as the run read them (its results.json), unless a reading flag is given. The model's labels
    are matched to the data's by name. No code from the model folder runs (trust_remote_code off). The default
    output_dir is runs/<model>-on-<dataset>. `data` is data in memory, as run() takes it.
    """
    from accelerate import Accelerator
    from datasets import DatasetDict

    from . import batches, families, logs, loop, runfolder
    from .api import check_model_folder, load_model
    from .data import load_text_data, text_pairs
    from .metrics import Scorer
    from .tables import with_data

    model = os.path.expanduser(model)  # ~/runs/x from Python; a Hub id is left as it is
    check_model_folder(model)
    cfg, run_split, otherwise = _cut_as_the_run(model, config, with_data(data, config, overrides), all_rows)
    dataset = cfg.train_file or cfg.validation_file or cfg.test_file or cfg.dataset_name
    if not (overrides.get("output_dir") or (config and config.output_dir)):  # not a run's runs/<data>-<mode>
        data = Path(str(dataset)).stem
        cfg = dataclasses.replace(cfg, output_dir=str(Path("runs") / f"{Path(model.rstrip('/')).name}-on-{data}"))
    output_dir = Path(cfg.output_dir)
    runfolder.check(output_dir, cfg.overwrite_output_dir, None)
    with runfolder.Lock(output_dir):
        if cfg.overwrite_output_dir:
            runfolder.invalidate(output_dir)
        accelerator = Accelerator(cpu=not torch.cuda.is_available())
        logs.setup("xfer_nlp", output_dir / EVALUATE_LOG, accelerator.is_main_process)
        data = load_text_data(cfg, hold_out=not all_rows, scored_only=True)
        notes = _say_how_cut(list(data.notes), cfg, run_split, otherwise)
        for note in notes:
            logger.info("Data: %s%s.", note, " (to score every row instead, --all_rows)"
                        if note.startswith("no validation split: held out") else "")
        tokenizer, classifier, reading = load_model(model)
        splits = [s for s in data.splits if s != "train"]
        # The run's own reading of texts, unless this evaluation names another.
        if any(k in overrides for k in ("max_seq_length", "truncation", "head_tokens", "long_text", "chunk_stride")) \
                or not (Path(model) / RESULTS).is_file():
            families.check_reach(classifier.config, cfg.max_seq_length, model)
            reading, _ = batches.choose_reading(cfg, data.splits[splits[0]]["text"], tokenizer,
                                                text_pairs(data.splits[splits[0]]))
        elif reading.pairs != (cfg.text_pair_column is not None):
            raise ConfigError(_pairs_mismatch(model, reading.pairs))
        logger.info("Reading texts: %s.", reading.describe())
        names = class_names(classifier.config, model)
        to_model = label_map(classifier.config.id2label, data.label_names)
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
        results = {"evaluated": model, "dataset": dataset, "data_source": data.source,
                   "label_names": names, "split_sizes": {s: len(data.splits[s]) for s in splits},
                   "data_notes": notes, "metrics": metrics,
                   "reading": dataclasses.asdict(reading),
                   "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        write_predictions(output_dir / PREDICTIONS, data.splits, outputs, names)
        plot_confusion(output_dir / CONFUSION, metrics, names)
        runfolder.write_json(output_dir / runfolder.EVALUATION, results)  # last: it marks a finished evaluation
        return EvaluationResult(output_dir, model, results["dataset"], metrics, results)
