"""The output folder of one run: what state it is in, whether a new run may use it, and who holds it now."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import re
import shutil
import types
import typing
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

try:
    import fcntl
except ModuleNotFoundError:  # Windows: the first use of a run folder says so, rather than "No module named 'fcntl'"
    raise ImportError("xfer_nlp runs on Linux and macOS: it holds a run's folder with a POSIX file lock (fcntl), "
                      "which Windows lacks. On Windows, run it in WSL.") from None

from .errors import CheckpointError, ConfigError, DiskFull, XferError

LOCK = ".xfer_nlp.lock"
# The layout of an output folder: every name the package writes there is one of these (the model's own files come
# from save_pretrained). results.json is written last: its presence marks a finished run.
RESULTS = "results.json"
CARD = "README.md"  # the model card
CONFIG = "config_xfer.yaml"  # the resolved settings, loadable with --config
PREDICTIONS = "predictions.jsonl"  # every evaluated text with its gold and predicted label (stays local)
CONFUSION = "confusion_matrix.png"
CURVES = "training_curves.png"  # a run with a training loop: its loss and validation figures by step
TRAIN_LOG, EVALUATE_LOG, COMPARE_LOG = "train.log", "evaluate.log", "compare.log"
EVALUATION = "evaluation.json"  # what `xfer-nlp evaluate` leaves
ONNX_DIR, ONNX_MODEL = "onnx", "model.onnx"  # what `xfer-nlp export --format onnx` adds (onnx/model.onnx)
CHECKPOINTS = "checkpoints"
TRACKER_PROJECT = "xfer_nlp"  # the trackers' project; tensorboard writes its events into OUTPUT_DIR/<it>
CELL = "cell.json"  # what a compare grid writes into a cell before its run
GRID = "grid.json"  # a compare folder's wall-clock seconds, summed over the calls that built it
FAILED = "failed.txt"  # ... and after a run that raised, with the traceback
# What a folder may hold and still count as empty: what a run that died before its first checkpoint leaves, and
# what a compare grid writes into a cell before and after its run.
BOOKKEEPING = {TRAIN_LOG, EVALUATE_LOG, CHECKPOINTS, CELL, FAILED}


def as_open_makes(*paths: Path) -> None:
    """Give files the mode open() gives a new file: 0o666 less the umask (0644 usually, 0664 on a group's shared
    folder). safetensors 0.8 writes through a temporary file that is always owner-only, 0600 (safetensors issue
    #782), so without this a model that one user saved (or root, building a Docker image) could not be loaded by
    another, though every other file of its folder could."""
    mask = os.umask(0o077)  # reading the umask means setting it: restored at once
    os.umask(mask)
    for path in paths:
        os.chmod(path, 0o666 & ~mask)


def save_safetensors(tensors: dict, path: Path, metadata: dict | None = None) -> None:
    """safetensors.torch.save_file, the file then given the mode open() gives (as_open_makes): every safetensors
    file xfer_nlp writes itself goes through here."""
    from safetensors.torch import save_file

    save_file(tensors, path, metadata=metadata)
    as_open_makes(path)


@contextmanager
def atomic_write(path: Path):
    """Yields a temporary path beside `path` to write; once the block succeeds, one rename puts it at `path`, so a
    reader (or a run killed mid-write) finds the old file or the new one, never half of one. On an error the
    temporary file is removed and `path` is left as it was. (A checkpoint, a folder that every process writes
    into, stages itself the same way in checkpoint.py.)"""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# A write the disk cannot hold, as each writer reports it: an OSError's errno, safetensors' "(os error 28)" in its
# message. torch.save says only that its stream writer failed (a RuntimeError), so a failed write that leaves the
# disk with less than NEARLY_FULL bytes free counts as one too.
FULL = {errno.ENOSPC: "no space is left on the disk", errno.EDQUOT: "the disk quota is used up",
        errno.EFBIG: "a file would be larger than the file system or the process limit allows"}
NEARLY_FULL = 1 << 20


def _free_bytes(folder: Path) -> int | None:
    try:
        return shutil.disk_usage(next(p for p in (folder, *folder.parents) if p.exists())).free
    except OSError:
        return None


def disk_full(e: BaseException, folder: Path) -> str | None:
    """What stopped a write into `folder`, if it was the disk's room (see FULL); None for any other error."""
    code = getattr(e, "errno", None)
    if code is None and (found := re.search(r"\(os error (\d+)\)", str(e))):
        code = int(found[1])
    if code in FULL:
        return FULL[code]
    free = _free_bytes(folder) if code is None else None
    return FULL[errno.ENOSPC] if free is not None and free < NEARLY_FULL else None


@contextmanager
def disk_full_explained(folder: Path, what: str, then: str):
    """Within the block, a write that the disk cannot hold ends in one DiskFull message: what could not be written,
    where, the room left, and `then` (how to go on). The writer inside removes what it half-wrote (atomic_write does);
    any other error passes through unchanged."""
    try:
        yield
    except Exception as e:
        why = disk_full(e, folder)
        if why is None:
            raise
        free = _free_bytes(folder)
        left = f"; {free / 2**20:,.0f} MB free now" if free is not None else ""
        why = f"{why} ('{folder}'{left})"
        raise DiskFull(f"Could not write {what}: {why}. {then}", why) from None


def state(out: Path) -> str:
    """missing | empty | finished | interrupted | failed | foreign (a non-empty folder that holds no xfer_nlp run).

    finished: results.json (a run) or evaluation.json (an evaluation), written last; interrupted: checkpoints to
    resume from; failed: a compare cell whose run raised and left no checkpoint (it starts over). This is the one
    place that decides; run, compare, report and push ask it.
    """
    if not out.exists():
        return "missing"
    entries = {p.name for p in out.iterdir() if not p.name.startswith(".xfer_nlp.")}  # our own bookkeeping
    if RESULTS in entries or EVALUATION in entries:
        return "finished"
    if any((out / CHECKPOINTS).glob("checkpoint-*")):
        return "interrupted"
    if not entries - BOOKKEEPING:
        return "failed" if FAILED in entries else "empty"
    return "foreign"


def unfinished(folder: Path, flag: str = "") -> str | None:
    """For a killed run's folder given where a finished one's model is read: the message that says so, with the way
    to finish it, rather than naming the model's files it lacks. None for any other folder."""
    if state(folder) != "interrupted":
        return None
    finish = ("Run the grid's compare command again: it resumes the cell" if (folder / CELL).is_file() else
              "Resume it with the same command and --resume_from_checkpoint latest")
    return (f"{flag}'{folder}' holds an unfinished run: checkpoints, and no model yet (it is saved when the run "
            f"finishes). {finish}, then use the folder.")


def not_a_file(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--output_dir '{out}' is a file. Pass a folder path.")


def make_writable(out: Path) -> None:
    """Create the folder `out`, or refuse in one message: a file in its place or its path, permissions, a read-only
    mount. The one sure test of writability is to write."""
    not_a_file(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".xfer_nlp.write-test.{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"--output_dir '{out}' cannot be written ({e.strerror}). Choose another folder, or fix "
                          "its permissions.") from None


def check(out: Path, overwrite: bool, resume: str | None) -> None:
    """Never lose earlier results, nor write into a folder that is not a run's without being told to."""
    not_a_file(out)
    now = state(out)  # the write test leaves nothing that changes it
    if resume == "latest" and now in ("missing", "empty", "failed", "foreign"):
        # refused here, before the data and the model load, and before the folder is created
        raise CheckpointError(f"No intact checkpoint under '{out / CHECKPOINTS}' to resume from: the folder holds no "
                              "checkpoint. Start the run again without --resume_from_checkpoint.")
    make_writable(out)
    if overwrite:
        return
    if now == "finished" and resume:
        raise ConfigError(f"--output_dir '{out}' holds a finished run ({out / RESULTS}): there is nothing to resume. "
                          "To train it again from the start, pass --overwrite_output_dir instead of "
                          "--resume_from_checkpoint.")
    if now == "finished":
        raise ConfigError(f"--output_dir '{out}' already holds a finished run (results.json or evaluation.json). Choose another "
                          "--output_dir, or pass --overwrite_output_dir to replace it.")
    if now == "interrupted" and not resume:
        raise ConfigError(f"--output_dir '{out}' holds checkpoints of an unfinished run. Pass "
                          "--resume_from_checkpoint latest to continue it, or --overwrite_output_dir to start over.")
    if now == "foreign":
        shown = ", ".join(sorted(p.name for p in out.iterdir())[:5])
        raise ConfigError(f"--output_dir '{out}' is not empty and holds no xfer_nlp run ({shown}, ...). Choose a "
                          "new or empty folder, or pass --overwrite_output_dir to write the run's files into it "
                          "(files of the same name are replaced).")


def invalidate(out: Path) -> None:
    """Before an overwriting run writes anything: the old run's results and checkpoints go first, so a run killed
    half-way never leaves a folder whose results.json describes another model. The old model's ONNX export goes
    too: `predict --backend onnx` would otherwise serve the old graph beside the new model, and so do the old run's
    tensorboard events."""
    (out / RESULTS).unlink(missing_ok=True)
    (out / EVALUATION).unlink(missing_ok=True)
    (out / CURVES).unlink(missing_ok=True)  # a probe writes none: an old one would describe another run
    shutil.rmtree(out / CHECKPOINTS, ignore_errors=True)
    shutil.rmtree(out / ONNX_DIR, ignore_errors=True)
    # tensorboard reads every events file in its folder as one run: the old run's curves would zig-zag with the new
    shutil.rmtree(out / TRACKER_PROJECT, ignore_errors=True)


class Lock:
    """An exclusive lock on the folder for the life of a run (or of a compare, on its grid folder); a second one
    into it is refused, naming the first."""

    def __init__(self, out: Path, holder_kind: str = "run"):
        out.mkdir(parents=True, exist_ok=True)
        # 0o666 less the umask, as open() makes any file: on a group's folder a teammate may resume the run
        self.fd = os.open(out / LOCK, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self.fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(self.fd)
            raise ConfigError(f"--output_dir '{out}' is in use by another {holder_kind} (pid {holder}). Wait for it "
                              "to end, or choose another --output_dir.") from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, str(os.getpid()).encode(), 0)

    def __enter__(self) -> "Lock":
        return self

    def __exit__(self, *exc) -> None:  # the pid goes with the lock
        os.ftruncate(self.fd, 0)
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


@dataclass
class RunRecord:
    """The schema of results.json: what a finished run reports. api.run writes it (through hub.save_outputs, last,
    so that its presence marks a finished run); the model card, push, report, compare and RunResult read it through
    read_results. The fields without a default are those every record has, a benchmark peer's included
    (benchmarks/setfit_peer.py); the others are what an xfer_nlp run adds."""

    mode: str
    model: str  # the encoder, as given (a name, Hub id or folder)
    dataset: str
    train_samples: int
    split_sizes: dict[str, int]
    metrics: dict[str, dict]  # per evaluated split: accuracy, macro_f1, per_class, confusion_matrix, --metrics
    train_seconds: float
    trainable_params: int
    total_params: int
    peak_memory_mb: float
    label_names: list[str]
    hardware: str
    finished_at: str
    config: dict  # RunConfig.to_dict(): the resolved settings, token removed
    pooling: str | None = None
    normalize: bool = False  # a pooled head that reads unit-length sentence vectors (contrastive, or one kept from it)
    architecture: str | None = None  # the exported class
    transformers_min: str = "4.57"  # the oldest transformers whose pipeline() loads the export (families.Family)
    data_source: str | None = None
    data_notes: list[str] = field(default_factory=list)
    num_processes: int = 1
    distributed_type: str | None = None  # Accelerate's: NO, MULTI_CPU, MULTI_GPU or FSDP
    mixed_precision: str = "no"
    torch: str | None = None
    malloc: str | None = None  # who served malloc (allocator.malloc): 512-token CPU steps differ 1.8x between them
    reading: dict | None = None  # how texts were read (batches.Reading), so predict and evaluate read them alike
    history: list[dict] = field(default_factory=list)  # one record per evaluation during training
    losses: list[dict] = field(default_factory=list)  # the training loss at each log (--logging_steps)
    schedule: dict | None = None  # parameter groups, learning rates, unfreezing stages, the steps run and why
    probe: dict | None = None  # the fitted head: C, its validation scores, encoding seconds, cache hits
    pairs: dict | None = None  # contrastive: the pair rounds, the pair count and the rule that set them
    head_init: dict | None = None  # --head_init probe: the fitted starting head (C, validation accuracy, seconds)
    best_epoch: float | None = None
    best_step: int | None = None
    stopped_early: bool = False
    test_seconds: float = 0.0  # scoring the test split once, after training: reporting, so not in train_seconds
    # A peer's scoring of the validation split after its training (setfit chooses nothing on it). An xfer_nlp run
    # scores validation inside train_seconds (to choose C, or the best evaluation), so it leaves this None.
    validation_seconds: float | None = None
    resumed: dict | None = None  # from a checkpoint: its step and the seconds earlier processes trained (in train_seconds)
    files: list[str] | None = None  # what the run wrote into its folder: exactly what push uploads
    onnx: dict | None = None  # the ONNX export, once `xfer-nlp export` made one: file, opset, checked logit difference

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data) -> RunRecord:
        if not isinstance(data, dict):
            raise ValueError("it is not a results record")
        names = {f.name for f in dataclasses.fields(cls)}
        required = {f.name for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
        missing, unknown = sorted(required - data.keys()), sorted(data.keys() - names)
        if missing or unknown:
            raise ValueError("it is not a results record of this version: "
                             + "; ".join(x for x in (f"missing {', '.join(missing)}" if missing else "",
                                                     f"unknown {', '.join(unknown)}" if unknown else "") if x))
        hints = typing.get_type_hints(cls)
        wrong = [k for k, v in data.items() if not of_kind(v, hints[k])]
        wrong += [f"metrics.{split}.{name}" for split, m in data["metrics"].items() if isinstance(m, dict)
                  for name in ("accuracy", "macro_f1") if name in m and not of_kind(m[name], float)]
        if wrong or not all(isinstance(m, dict) for m in data["metrics"].values()):
            raise ValueError(f"a field is not of its kind: {', '.join(wrong) or 'metrics'}")
        return cls(**data)


def of_kind(value, hint) -> bool:
    """`value`, read from JSON, is of the annotated kind: the outer type only (a number, text, list, mapping, or
    None where allowed), enough that no reader of the record meets text where it computes with a number."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(of_kind(value, h) for h in typing.get_args(hint))
    kind = typing.get_origin(hint) or hint
    if kind in (int, float):  # JSON writes 2.0 as 2; a bool is no number here
        return isinstance(value, (int, float) if kind is float else int) and not isinstance(value, bool)
    return value is None if kind is type(None) else isinstance(value, kind)


def write_json(path: Path, data) -> None:
    """results.json, evaluation.json, cell.json, grid.json: whole or not at all (atomic_write)."""
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def read_json(path: Path):
    """A JSON file parsed as data only; None where it is not valid JSON (the caller names what it expected)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        return None


def recorded(model_dir: Path, key: str):
    """One field of a model folder's results.json (an xfer_nlp run's export), or None where it has none: how the run
    read its texts, how it split its data. Parsed as JSON only; a damaged file is an error that names it."""
    path = model_dir / RESULTS
    if not path.is_file():
        return None
    data = read_json(path)
    if not isinstance(data, dict):
        raise ConfigError(f"'{path}' is damaged; re-run the export, or delete it to use the folder as any model "
                          "folder (texts then read as pipeline() reads them).")
    return data.get(key)


def read_results(out: Path) -> RunRecord:
    """A finished run's results.json; a damaged one is an error that names the file."""
    path = out / RESULTS
    try:
        return RunRecord.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, UnicodeDecodeError) as e:
        raise XferError(f"'{path}' is damaged ({str(e)[:160]}). Run again with --overwrite_output_dir to redo the "
                        "run (in a compare grid: run the compare command again, which runs the cell afresh).") from None