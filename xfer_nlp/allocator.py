"""glibc's allocator, told to keep the memory a training step frees for the next step (--keep_freed_memory).

glibc maps every block above its largest mmap threshold (32 MB) on its own and unmaps it when freed, so each
training step maps its big activations anew and the kernel zeroes every page on first touch. At 512 tokens a
batch of 32 holds many 50-200 MB activations: a third of a polarity2k fine-tune's CPU time was the kernel's.
With mmap off (M_MMAP_MAX 0) every block comes from the heap, and with trimming off freed pages stay for reuse.
Measured on 2 cores (benchmarks/RESULTS.md, "glibc's allocator"): the kernel's time halved, steps at 512 tokens
1.3-1.4x faster, peak RSS up by 30%, identical losses. Off by default for that memory. The setting lasts for the
rest of the process (mallopt cannot restore glibc's dynamic thresholds). Nothing is done off glibc.

tcmalloc, preloaded (LD_PRELOAD) before the process starts, did better on both counts: 512-token steps 1.8x faster
than glibc's defaults with less peak RSS, flat over a whole fine-tune ("Memory allocators" in RESULTS.md), and
sentence-length training 1.1-1.26x faster with 16-29% less peak RSS, so a run that trains on a CPU without it
logs how to use it. `xfer-nlp predict --input` says so too: labelling a file through torch ran 1.06-1.2x faster
under it, with up to 17% less peak memory ("Scale of data" in RESULTS.md; onnxruntime, with its own arena, gained
3-5%). Under a preloaded allocator mallopt is not glibc's, so the flag does nothing there.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import platform
from pathlib import Path

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # from glibc's malloc.h
NEVER = -1  # M_TRIM_THRESHOLD -1 disables trimming (man mallopt); 2**31 - 1, the largest positive int, still
# trims when a 512-token step frees more than 2 GB at once


def preloaded() -> str | None:
    """The malloc that replaced glibc's in this process through LD_PRELOAD (tcmalloc or jemalloc), if any."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:  # not Linux
        return None
    return next((name for name in ("tcmalloc", "jemalloc") if f"lib{name}" in maps), None)


def malloc() -> str:
    """Who serves malloc in this process, for results.json: a preloaded tcmalloc or jemalloc, else the C library."""
    return preloaded() or platform.libc_ver()[0] or "the C library"


def keep_freed_memory() -> bool:
    """True when glibc took the settings; False where there is no glibc (macOS, Windows, musl) or another
    allocator serves malloc."""
    if malloc() != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, NEVER))


def tcmalloc_hint(mode: str, max_seq_length: int, device_type: str) -> str | None:
    """How to run under tcmalloc, for the runs it was measured to speed up (every trained mode on a Linux CPU; not
    the probe, 3-7% faster) when they run under glibc's malloc; None otherwise."""
    if mode == "probe":
        return None
    gain = ("512-token fine-tuning steps on a CPU ran 1.8x faster, in less memory," if max_seq_length >= 512 else
            "Training on a CPU ran 1.1-1.26x faster (sst2 sentences, finetune and lora), with 16-29% less peak "
            "memory, and 512-token steps 1.8x faster,")
    return _hint(gain, "Memory allocators", device_type)


def predict_hint(device_type: str) -> str | None:
    """How to run under tcmalloc, for labelling a file on a Linux CPU under glibc's malloc; None otherwise."""
    return _hint("labelling texts on a CPU ran 1.06-1.2x faster, with up to 17% less peak memory,", "Scale of data",
                 device_type)


def _hint(gain: str, section: str, device_type: str) -> str | None:
    if device_type != "cpu" or malloc() != "glibc":
        return None
    return (f"{gain} under tcmalloc than under glibc's malloc (benchmarks/RESULTS.md, \"{section}\"). To use it, "
            "install it (Debian/Ubuntu: apt-get install libtcmalloc-minimal4) and start the command with "
            "LD_PRELOAD=libtcmalloc_minimal.so.4 in its environment.")
