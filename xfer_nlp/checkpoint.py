"""Training checkpoints that are atomic and verified: save, rotate, and find the newest intact one.

Accelerate's `save_state` writes model, optimizer, scheduler, RNG states and registered objects. Around it we add
what makes a checkpoint trustworthy after a crash: it is written into a temporary folder and renamed only when
complete, with a manifest of every file's size and hash, so a truncated or half-written checkpoint is never
taken for a good one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

from .errors import XferError

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
PREFIX = "checkpoint-"


class CheckpointError(XferError):
    """A checkpoint that cannot be resumed from."""


def _digest(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def verify(path: Path) -> str | None:
    """None when the checkpoint is complete and unchanged, else what is wrong."""
    manifest = path / MANIFEST
    if not manifest.is_file():
        return "it has no manifest (it was never completed)"
    try:
        files = json.loads(manifest.read_text())["files"]
    except (ValueError, KeyError):
        return "its manifest is unreadable"
    for name, meta in files.items():
        f = path / name
        if not f.is_file():
            return f"{name} is missing"
        if f.stat().st_size != meta["size"]:
            return f"{name} is truncated ({f.stat().st_size} of {meta['size']} bytes)"
        if _digest(f) != meta["sha256"]:
            return f"{name} does not match its recorded hash"
    return None


def step_of(path: Path) -> int:
    return int(path.name[len(PREFIX):])


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

    def save(self, step: int, extra: dict) -> Path:
        """Write checkpoint-<step> atomically; every process must call it."""
        acc = self.accelerator
        final = self.folder / f"{PREFIX}{step}"
        tmp = self.folder / f".tmp-{PREFIX}{step}"
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        acc.save_state(str(tmp))  # each process writes its own RNG state into it
        acc.wait_for_everyone()
        if acc.is_main_process:
            (tmp / "xfer_state.json").write_text(json.dumps(extra, indent=2))
            files = {p.name: {"size": p.stat().st_size, "sha256": _digest(p)}
                     for p in sorted(tmp.iterdir()) if p.is_file()}
            (tmp / MANIFEST).write_text(json.dumps({"step": step, "files": files}, indent=2))
            _fsync_dir(tmp)
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)  # the checkpoint exists, whole, or not at all
            self._rotate()
        acc.wait_for_everyone()
        return final

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


def _fsync_dir(path: Path) -> None:
    """Flush the files of a folder to disk before it is renamed into place."""
    for p in path.iterdir():
        with open(p, "rb") as f:
            os.fsync(f.fileno())
