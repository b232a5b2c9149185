"""Training checkpoints that are atomic, verified and never execute code: save, rotate, load, find the newest intact.

A checkpoint is a folder of data formats that cannot carry code: the model as safetensors, each process's RNG
states as safetensors (Python's and NumPy's generator states as JSON in its metadata), the run's own state
(config, progress, stage, sampler position) as JSON, and the optimizer, scheduler and gradient-scaler states as
`torch.save` files that are read back with `torch.load(weights_only=True)`, whose unpickler builds tensors and
plain containers only and refuses any other object. Accelerate's `save_state`/`load_state` is not used: its RNG
and registered-object files are unpickled with `weights_only=False`, so a planted `__reduce__` would run on resume.

It is written into a temporary folder with a manifest of every file's size and SHA-256 and renamed only when
complete, so a truncated or half-written checkpoint is never taken for a good one. The manifest guards against
damage, not against an attacker (who can recompute it); the formats above are what make a hostile file harmless.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from accelerate.utils import DistributedType
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open

from .errors import CheckpointError
from .runfolder import save_safetensors

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
PREFIX = "checkpoint-"
MODEL = "model.safetensors"
STATE = "xfer_state.json"


def _digest(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:  # hashlib.file_digest does this from Python 3.11 on; the package runs on 3.10
        while block := f.read(1 << 20):
            sha.update(block)
    return sha.hexdigest()


def verify(path: Path) -> str | None:
    """None when the checkpoint is complete and unchanged, else what is wrong."""
    manifest = path / MANIFEST
    if not manifest.is_file():
        return "it has no manifest (it was never completed)"
    try:
        record = json.loads(manifest.read_text())
        files = record["files"]
        assert type(record.get("step")) is int and isinstance(files, dict) and all(
            isinstance(m, dict) and type(m.get("size")) is int and isinstance(m.get("sha256"), str)
            for m in files.values())
    except (ValueError, KeyError, TypeError, AssertionError, UnicodeDecodeError):
        return "its manifest is unreadable"
    for name, meta in files.items():
        f = path / name
        if Path(name).name != name or not f.is_file():
            return f"{name} is missing"
        if f.stat().st_size != meta["size"]:
            return f"{name} is truncated ({f.stat().st_size} of {meta['size']} bytes)"
        if _digest(f) != meta["sha256"]:
            return f"{name} does not match its recorded hash"
    return None


def step_of(path: Path) -> int:
    return int(path.name[len(PREFIX):])


def saved_at(path: Path) -> int:
    """The optimizer step a verified checkpoint was saved after (its manifest's record; the folder may be renamed)."""
    return json.loads((path / MANIFEST).read_text())["step"]


def _rng_file(rank: int) -> str:
    return f"rng-rank{rank}.safetensors"


def _optimizer_file(accelerator) -> str:
    # FSDP shards the optimizer state: each process keeps its own part. Everywhere else every process holds the
    # same state, and the main process's copy is the one saved.
    if accelerator.distributed_type == DistributedType.FSDP:
        return f"optimizer-rank{accelerator.process_index}.pt"
    return "optimizer.pt"


def rng_states() -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """This process's generators as tensors plus JSON strings (safetensors' metadata)."""
    kind, key, pos, has_gauss, gauss = np.random.get_state()
    version, py_state, py_gauss = random.getstate()
    tensors = {"torch": torch.get_rng_state(), "numpy_key": torch.from_numpy(key.astype(np.int64))}
    if torch.cuda.is_available():
        tensors.update({f"cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    meta = {"numpy": json.dumps([kind, int(pos), int(has_gauss), float(gauss)]),
            "python": json.dumps([version, list(py_state), py_gauss])}
    return tensors, meta


def set_rng_states(tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
    kind, pos, has_gauss, gauss = json.loads(meta["numpy"])
    np.random.set_state((str(kind), tensors["numpy_key"].numpy().astype(np.uint32), int(pos), int(has_gauss),
                         float(gauss)))
    version, py_state, py_gauss = json.loads(meta["python"])
    random.setstate((int(version), tuple(int(x) for x in py_state), py_gauss))
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[f"cuda.{i}"] for i in range(sum(k.startswith("cuda.") for k in tensors))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


def _torch_load(path: Path):
    """A tensors-and-containers file; anything else in it (an object to build, code to call) is refused."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError, TypeError) as e:
        raise CheckpointError(f"Checkpoint file '{path}' is not a plain tensor state, so it was not loaded "
                              f"({type(e).__name__}: {str(e).splitlines()[0][:200]}). It was not written by "
                              "xfer_nlp or was altered; resume from another checkpoint or start over.") from None


@dataclass
class Saved:
    """What a checkpoint holds, read without executing anything."""

    path: Path
    state: dict  # xfer_state.json: config, world, progress
    model: dict[str, torch.Tensor]
    optimizer: dict
    scheduler: dict
    scaler: dict | None
    rng: tuple[dict[str, torch.Tensor], dict[str, str]]


class Checkpoints:
    """The checkpoints/ folder of one run."""

    def __init__(self, folder: Path, accelerator, total_limit: int | None):
        self.folder = folder
        self.accelerator = accelerator
        self.total_limit = total_limit

    def complete(self) -> list[Path]:
        if not self.folder.is_dir():
            return []
        return sorted((p for p in self.folder.iterdir() if p.is_dir() and p.name.startswith(PREFIX)
                       and p.name[len(PREFIX):].isdigit()), key=step_of)

    def discard_unfinished(self) -> None:
        """Remove what a process killed mid-write left here (a .tmp-checkpoint-N folder, a half-written best-weights
        file): never read, it only holds space, as much as a checkpoint. Called by the main process of the run that
        holds the folder's lock, so no other writer can be under way."""
        if not self.folder.is_dir():
            return
        for path in self.folder.iterdir():
            if path.name.startswith(".") and ".tmp" in path.name:
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
                logger.info("Removed %s, left half-written by an earlier process that was stopped.", path)

    def save(self, step: int, model, optimizer, scheduler, state: dict) -> Path:
        """Write checkpoint-<step> atomically; every process must call it."""
        acc = self.accelerator
        final = self.folder / f"{PREFIX}{step}"
        tmp = self.folder / f".tmp-{PREFIX}{step}"
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        try:
            self._write(tmp, model, optimizer, scheduler, state, step)
        except BaseException:  # a full disk, Ctrl-C: the half-written folder goes, so its space is free again
            if acc.is_main_process:
                shutil.rmtree(tmp, ignore_errors=True)
            raise
        if acc.is_main_process:
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)  # the checkpoint exists, whole, or not at all
            self._rotate()
        acc.wait_for_everyone()
        return final

    def _write(self, tmp: Path, model, optimizer, scheduler, state: dict, step: int) -> None:
        acc = self.accelerator
        weights = acc.get_state_dict(model)  # a collective under FSDP: every process takes part
        tensors, meta = rng_states()
        save_safetensors(tensors, tmp / _rng_file(acc.process_index), metadata=meta)
        if acc.is_main_process or acc.distributed_type == DistributedType.FSDP:
            torch.save(optimizer.state_dict(), tmp / _optimizer_file(acc))
        if acc.is_main_process:
            save_safetensors({k: v.detach().contiguous().cpu() for k, v in weights.items()}, tmp / MODEL)
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
            if acc.scaler is not None:
                torch.save(acc.scaler.state_dict(), tmp / "scaler.pt")
            (tmp / STATE).write_text(json.dumps(state, indent=2))
        acc.wait_for_everyone()
        if acc.is_main_process:
            files = {p.name: {"size": p.stat().st_size, "sha256": _digest(p)}
                     for p in sorted(tmp.iterdir()) if p.is_file()}
            (tmp / MANIFEST).write_text(json.dumps({"step": step, "files": files}, indent=2))
            _fsync_dir(tmp)

    def _rotate(self) -> None:
        if not self.total_limit:
            return
        for old in self.complete()[:-self.total_limit]:
            shutil.rmtree(old, ignore_errors=True)

    def resolve(self, spec: str) -> Path:
        """`latest` -> the newest intact checkpoint (damaged ones skipped with a warning); a path -> verified."""
        if spec != "latest":
            path = Path(spec)
            if not path.is_dir():
                raise CheckpointError(f"--resume_from_checkpoint '{spec}' is not a folder. Pass a checkpoint-<step> "
                                      f"folder under {self.folder}, or 'latest'.")
            problem = verify(path)
            if problem:
                raise CheckpointError(f"Checkpoint '{path}' is damaged: {problem}. Resume from another one (or "
                                      "'latest', which skips damaged checkpoints).")
            return path
        for path in reversed(self.complete()):
            problem = verify(path)
            if problem is None:
                return path
            logger.warning("Skipping damaged checkpoint %s: %s.", path, problem)
        raise CheckpointError(f"No intact checkpoint under '{self.folder}' to resume from. Start the run again "
                              "without --resume_from_checkpoint (with --overwrite_output_dir).")

    def load(self, path: Path) -> Saved:
        """Read a verified checkpoint; no file in it is unpickled with code execution allowed."""
        acc = self.accelerator
        needed = [STATE, MODEL, "scheduler.pt", _optimizer_file(acc), _rng_file(acc.process_index)]
        missing = [n for n in needed if not (path / n).is_file()]
        if missing:
            raise CheckpointError(f"Checkpoint '{path}' lacks {', '.join(missing)}: it was written by another "
                                  "version of xfer_nlp, another number of processes, or with FSDP where this run has "
                                  "none or the reverse (FSDP writes one optimizer file a process). Resume with the "
                                  "run's original launch, or start over with --overwrite_output_dir.")
        try:
            state = json.loads((path / STATE).read_text(encoding="utf-8"))
            assert isinstance(state, dict) and isinstance(state.get("config"), dict)
            model = load_file(path / MODEL)
            with safe_open(path / _rng_file(acc.process_index), "pt") as f:
                rng = ({k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {})
            assert {"torch", "numpy_key"} <= rng[0].keys() and {"numpy", "python"} <= rng[1].keys()
        except (ValueError, AssertionError, UnicodeDecodeError, SafetensorError, OSError) as e:
            raise CheckpointError(f"Checkpoint '{path}' could not be read ({type(e).__name__}: "
                                  f"{str(e)[:200]}); resume from another checkpoint or start over.") from None
        scaler = path / "scaler.pt"
        return Saved(path, state, model, _torch_load(path / _optimizer_file(acc)), _torch_load(path / "scheduler.pt"),
                     _torch_load(scaler) if scaler.is_file() else None, rng)


def _fsync_dir(path: Path) -> None:
    """Flush the files of a folder to disk before it is renamed into place."""
    for p in path.iterdir():
        with open(p, "rb") as f:
            os.fsync(f.fileno())
