"""glibc's allocator, told to keep the memory a training step frees for the next step (--keep_freed_memory).

glibc maps every block above its largest mmap threshold (32 MB) on its own and unmaps it when freed, so each
training step maps its big activations anew and the kernel zeroes every page on first touch. At 512 tokens a
batch of 32 holds many 50-200 MB activations: a third of a polarity2k fine-tune's CPU time was the kernel's.
With mmap off (M_MMAP_MAX 0) every block comes from the heap, and with trimming off freed pages stay for reuse.
Measured on 2 cores (benchmarks/RESULTS.md, "glibc's allocator"): the kernel's time halved, steps at 512 tokens
1.3-1.4x faster, peak RSS up by 30%, identical losses. Off by default for that memory. The setting lasts for the
rest of the process (mallopt cannot restore glibc's dynamic thresholds). Nothing is done off glibc.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import platform

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # from glibc's malloc.h
NEVER = -1  # M_TRIM_THRESHOLD -1 disables trimming (man mallopt); 2**31 - 1, the largest positive int, still
# trims when a 512-token step frees more than 2 GB at once


def keep_freed_memory() -> bool:
    """True when glibc took the settings; False where there is no glibc (macOS, Windows, musl)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, NEVER))
