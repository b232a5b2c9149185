"""What the benchmarks' reports share: the machine they ran on, and where their tables go."""

import platform
from pathlib import Path

import torch


def machine() -> str:
    """The device that trained (a GPU when there is one: xfer_nlp and the Trainer both pick it) and torch's build."""
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} GPU, torch {torch.__version__}, CUDA {torch.version.cuda}"
    return f"{platform.machine()} CPU, {torch.get_num_threads()} threads, torch {torch.__version__}"


def publish(text: str, out: str | None) -> None:
    """Print the report, and write it to `out` too when given."""
    print(text)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n")
