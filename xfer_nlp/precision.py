"""The precision policy: what `--mixed_precision auto` (and `predict --precision auto`) choose on this hardware.

The figures behind each choice are in benchmarks/RESULTS.md ("On the Intel Xeon with AMX", "On a GPU", the
levers table), with the commands that measured them; they are not repeated here, where they would go stale.
Beside it, the facts about the CPU that a run records or is told: its name, bf16 units and cores in use.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

from .errors import ConfigError
from .families import autocast_refusal
from .modes import MODES, resolve_model_path, split_export

# On GPUs, batch-32 steps of small encoders are bound by kernel launches and autocast's casts only add launches, so
# bf16 pays from about bert-base's size up (RESULTS.md, "On a GPU": benchmarks/precision.py).
GPU_BF16_MIN_PARAMS = 100_000_000


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""  # not Linux: no model name, and bf16 counted as not native


def cpu_has_bf16() -> bool:
    """Whether this CPU computes in bf16 natively (AVX512-BF16 or AMX); without them bf16 is emulated and slower
    than fp32. With them a fine-tuning step is 1.6-2x faster in bf16 autocast (RESULTS.md)."""
    flags = _cpuinfo()
    return " avx512_bf16" in flags or " amx_bf16" in flags


def cpu_name() -> str:
    """The CPU's model and its bf16 units, e.g. 'AMD EPYC 9B14 (AVX512-BF16)': what a results.json and a benchmark
    name, since timings compare only within one kind of machine."""
    info = _cpuinfo()
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")),
                 f"{platform.machine()} CPU")
    units = [name for flag, name in ((" amx_bf16", "AMX-BF16"), (" avx512_bf16", "AVX512-BF16")) if flag in info]
    return f"{model} ({', '.join(units) or 'no native bf16'})"


def cpu_hardware(processes: int) -> str:
    """A CPU run's `hardware` in results.json; the setfit peer writes the same, so reports can pair cells by it."""
    return f"{processes} process(es) on {cpu_name()}, {os.cpu_count()} cores"


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity (a taskset, a container's cpuset), at most the machine's
    physical cores (hyperthreads share a core's arithmetic units; torch's default thread count is the cores)."""
    import psutil

    logical = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(logical, psutil.cpu_count(logical=False) or logical)


def idle_cores_hint(device: str) -> str | None:
    """Why a CPU run leaves cores idle, and how to use them; None when its processes' threads cover the cores.

    `accelerate launch` sets OMP_NUM_THREADS=1 in each process unless given --num_cpu_threads_per_process or
    --cpu, so `accelerate launch recipes/sentiment.py` on a CPU trained on one thread: on 2 cores the recipe's
    fine-tune took 1.6x as long as on both (benchmarks/RESULTS.md, "Threads under accelerate launch"). A process
    cannot tell that 1 from a user's own choice, so it says so rather than changing it.
    """
    if device != "cpu":
        return None
    cores, threads = usable_cores(), torch.get_num_threads()
    processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))  # this machine's processes of a launch
    if threads * processes >= cores:
        return None
    where = f" (OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']})" if "OMP_NUM_THREADS" in os.environ else ""
    per = cores // processes
    return (f"{processes} process(es) of {threads} thread(s) each use {threads * processes} of this machine's {cores} "
            f"cores{where}. `accelerate launch` gives each process 1 thread unless told otherwise: add "
            f"--num_cpu_threads_per_process {per} to it (or set OMP_NUM_THREADS={per}) to use every core: on 2 cores "
            "the recipe's fine-tune took 1.6x as long on one. If the cores are left free on purpose, ignore this.")


def bf16_is_native(device: str) -> bool:
    return torch.cuda.is_bf16_supported() if device == "cuda" else cpu_has_bf16()


def encoder_config(model_name_or_path: str):
    """The encoder's config (an earlier run's pooled export: its encoder's); None for an unreadable model, whose
    loader names the problem a moment later."""
    from transformers import AutoConfig

    try:
        return split_export(AutoConfig.from_pretrained(resolve_model_path(model_name_or_path)))[0]
    except (OSError, ValueError, KeyError):
        return None


def encoder_parameters(model_name_or_path: str) -> int | None:
    """The encoder's parameter count from its config alone (built on the meta device: no weights read or held)."""
    from transformers import AutoModel

    config = encoder_config(model_name_or_path)
    if config is None:
        return None
    try:
        with torch.device("meta"):
            return sum(p.numel() for p in AutoModel.from_config(config).parameters())
    except (ValueError, KeyError):
        return None


def resolve_precision(requested: str, mode: str, model_name_or_path: str) -> str:
    """auto: what `accelerate launch --mixed_precision` asked for, else what measured fastest on this hardware.

    That is bf16 on CPUs that compute it natively, bf16 on bf16 GPUs for encoders of GPU_BF16_MIN_PARAMS or more,
    and fp32 (no) otherwise. A mode without a training loop (the probe) stays in fp32 under auto: its features are
    the whole model, and fp32 keeps its reported accuracy exactly what the exported model computes in `pipeline()`.
    A family that fails under autocast (families.Family.autocast) gets fp32 from auto, and bf16 or fp16 asked for
    by flag or launch is refused before anything loads.
    """
    chosen = _choose(requested, mode, model_name_or_path)
    if chosen in ("bf16", "fp16") and (config := encoder_config(model_name_or_path)) is not None \
            and (refusal := autocast_refusal(config, model_name_or_path, chosen)):
        if requested == "auto" and os.environ.get("ACCELERATE_MIXED_PRECISION", "no") == "no":
            return "no"
        raise ConfigError(refusal)
    return chosen


def _choose(requested: str, mode: str, model_name_or_path: str) -> str:
    if requested != "auto":
        return requested
    if not MODES[mode].loop:
        return "no"
    launched = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
    if launched in ("fp16", "bf16"):
        return launched
    if torch.cuda.is_available():
        if not torch.cuda.is_bf16_supported():
            return "no"
        params = encoder_parameters(model_name_or_path)
        return "bf16" if params is None or params >= GPU_BF16_MIN_PARAMS else "no"
    return "bf16" if cpu_has_bf16() else "no"
