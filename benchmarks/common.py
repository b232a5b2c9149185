"""What the benchmarks' reports share: the machine they ran on, and where their tables go."""

import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import torch

from xfer_nlp.precision import cpu_name  # noqa: F401  (the reports import it from here)


def machine() -> str:
    """The device that trained (a GPU when there is one: xfer_nlp and the Trainer both pick it) and torch's build."""
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} GPU, torch {torch.__version__}, CUDA {torch.version.cuda}"
    return f"{cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def publish(text: str, out: str | None) -> None:
    """Print the report, and write it to `out` too when given."""
    print(text)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n")


class Measured(NamedTuple):
    seconds: float  # wall
    peak_mb: float  # the child's own peak RSS
    user_s: float
    system_s: float


def run_measured(cmd: list[str], env: dict | None = None) -> Measured:
    """Run `cmd` as a child process (with `env` added to this one's environment), measured from wait4's rusage of
    that child alone. Its output goes to a temporary file, not a pipe, which a long progress bar would fill; on
    failure the file's tail is in the RuntimeError."""
    with tempfile.TemporaryFile("w+") as log:
        start = time.perf_counter()
        child = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        _, status, usage = os.wait4(child.pid, 0)  # ru_maxrss in KiB on Linux
        child.returncode = os.waitstatus_to_exitcode(status)  # reaped here, so Popen must not wait for it again
        seconds = time.perf_counter() - start
        if child.returncode != 0:
            log.seek(0)
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{log.read()[-3000:]}")
    return Measured(seconds, usage.ru_maxrss / 1024, usage.ru_utime, usage.ru_stime)
