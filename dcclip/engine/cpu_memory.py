"""Keep freed heap memory in a CPU training process instead of handing it back to the kernel after every step.

A CPU training step frees and re-allocates the same few-megabyte activations and gradients on every step. With glibc's
default policy (mmap threshold adapting from 128 KiB, trim threshold following it, per-thread arenas that shrink) much
of that memory goes back to the kernel and comes back as fresh page faults on the next step. Raising the mmap threshold
to glibc's ceiling and never trimming keeps the pages mapped: what PyTorch's CPU tuning guide gets from preloading
jemalloc or tcmalloc, with the allocator already in the process. Measured on 2 cores (stage 1 of the demo, 100 steps):
9x fewer minor page faults (1.9 M -> 0.2 M), kernel time 5.8 -> 1.1 s, 1.1-1.2x samples per second, bit-identical
losses.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform

log = logging.getLogger(__name__)

# mallopt(3) parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's largest accepted mmap threshold on 64-bit (HEAP_MAX_SIZE / 2)
TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int: about 2 GiB of free heap top before any is returned
TOP_PAD = 64 * 1024 * 1024  # grow the heap in 64 MiB steps rather than per allocation

_applied: bool | None = None  # the outcome of the first call: the settings are process-wide and stay


def user_chose_allocator() -> str:
    """What in the environment already tunes or replaces malloc ('' when nothing does): it is left alone."""
    for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_ARENA_MAX"):
        if name in os.environ:
            return name
    if "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return "GLIBC_TUNABLES"
    preload = os.environ.get("LD_PRELOAD", "")
    if any(lib in preload for lib in ("jemalloc", "tcmalloc", "mimalloc")):
        return "LD_PRELOAD"
    return ""


def on_glibc() -> bool:
    """Linux with glibc: the only C library whose malloc these settings apply to."""
    return platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def keep_freed_memory() -> bool:
    """Set glibc's malloc to keep freed memory mapped in this process; False where it does not apply.

    Does nothing off Linux/glibc, or when the environment already tunes or replaces the allocator (MALLOC_* variables,
    GLIBC_TUNABLES, a preloaded jemalloc/tcmalloc/mimalloc). The settings last for the life of the process, so only
    the first call acts; later calls return its outcome.
    """
    global _applied
    if _applied is None:
        _applied = _set_malloc_options()
    return _applied


def _set_malloc_options() -> bool:
    if not on_glibc():
        return False
    chosen = user_chose_allocator()
    if chosen:
        log.info("malloc left as configured (%s is set)", chosen)
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    settings = ((M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TRIM_THRESHOLD, TRIM_THRESHOLD), (M_TOP_PAD, TOP_PAD))
    applied = all(libc.mallopt(param, value) == 1 for param, value in settings)
    if not applied:
        log.warning("glibc mallopt refused a setting: freed memory may return to the kernel after every step")
    return applied
