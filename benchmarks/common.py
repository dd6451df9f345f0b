"""Measuring helpers shared by the benchmarks: median wall time, and peak memory in a fresh process.

Peak memory on CPU: torch keeps no allocator statistics there, so the figure is the process's
peak resident set size after the measured call minus the resident size just before it. The
peak is VmHWM from /proc/self/status, or `resource.getrusage` ru_maxrss where that file does
not exist. On Linux the peak is first reset to the current size through
/proc/self/clear_refs, so that memory used by the setup (model construction, for example)
does not hide the call's own peak. Where that reset is unavailable the figure can only be
read as "at most the process peak". With `warmup`, the measured call is the second one: a
first, unmeasured call pays one-time costs, and glibc's malloc_trim then returns its freed
memory to the system so that the second call's allocations show up in the resident size.
The result includes everything the process touches during the call (allocator caches,
thread stacks), so compare figures of one machine only.

On CUDA the figure is torch.cuda.max_memory_allocated() during the call minus the memory
allocated before it.
"""

from __future__ import annotations

import gc
import multiprocessing
import platform
import resource
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

_KIB = 1024


def median_seconds(
    function: Callable[[], Any], *, runs: int = 5, warmup: int = 1, clock: Callable[[], float] = time.perf_counter
) -> float:
    """Return the median time in seconds of `runs` calls of `function`, after `warmup` untimed calls.

    `clock` is wall time by default. Pass time.process_time for the CPU time of this process
    (all its threads), which other work on a shared machine disturbs less than wall time.
    """
    if runs < 1:
        raise ValueError(f"runs must be at least 1, got {runs}")
    for _ in range(warmup):
        function()
    times = []
    for _ in range(runs):
        start = clock()
        function()
        times.append(clock() - start)
    return statistics.median(times)


def _current_rss_bytes() -> int:
    """Resident set size now, from /proc/self/statm (Linux)."""
    import os

    resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter to the current RSS; False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _release_free_memory() -> bool:
    """Return freed heap memory to the system (glibc malloc_trim); False where that is unavailable.

    Without it, memory that a warm-up call freed stays resident, and a second call that reuses
    it would show no growth in resident size.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        ctypes.CDLL(name).malloc_trim(0)
    except (OSError, AttributeError):
        return False
    return True


def _peak_rss_bytes() -> int:
    # clear_refs resets VmHWM. getrusage's ru_maxrss may also keep peaks that the kernel folded
    # in elsewhere (for example when threads exit), so VmHWM is read first where it exists.
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * _KIB
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports kibibytes, macOS bytes.
    return peak if sys.platform == "darwin" else peak * _KIB


@dataclass
class MemoryMeasurement:
    """Peak memory of one call.

    Fields:
        peak_bytes: peak during the call minus the memory in use before it.
        method: how it was measured ("cuda max_memory_allocated", "peak RSS (reset)" or
            "peak RSS (not reset)").
    """

    peak_bytes: int
    method: str


def _measure_in_child(
    setup: Callable[[], Any], run: Callable[[Any], Any], device: str, warmup: bool
) -> MemoryMeasurement:
    state = setup()
    on_cuda = device.startswith("cuda")
    # The first call pays one-time costs (kernel selection, thread pools, lazy buffers). On CPU
    # a warm-up is only valid when its freed memory can be returned to the system.
    if warmup and (on_cuda or _release_free_memory()):
        run(state)
        gc.collect()
        if not on_cuda:
            _release_free_memory()
    gc.collect()

    if on_cuda:
        import torch

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        run(state)
        torch.cuda.synchronize()
        return MemoryMeasurement(torch.cuda.max_memory_allocated() - before, "cuda max_memory_allocated")

    was_reset = _reset_peak_rss()
    before = _current_rss_bytes()
    run(state)
    method = "peak RSS (reset)" if was_reset else "peak RSS (not reset)"
    return MemoryMeasurement(max(_peak_rss_bytes() - before, 0), method)


def peak_memory(
    setup: Callable[[], Any],
    run: Callable[[Any], Any],
    *,
    device: str = "cpu",
    repeats: int = 1,
    warmup: bool = False,
) -> MemoryMeasurement:
    """Peak memory of `run(setup())`, measured in a fresh process so that no earlier work counts.

    `setup` and `run` must be picklable (module-level functions or functools.partial of them),
    because each child process is started with the "spawn" method. Only `run` is measured. With
    `warmup`, only its second call is measured, so that one-time costs of a first call do not
    count. On CPU that needs glibc's malloc_trim to release the first call's memory, and without
    it the first call is measured.
    With `repeats` > 1 the call is measured in that many fresh processes and the median is
    returned, because resident-size figures vary from process to process.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    context = multiprocessing.get_context("spawn")
    measurements = []
    for _ in range(repeats):
        with context.Pool(processes=1) as pool:
            measurements.append(pool.apply(_measure_in_child, (setup, run, device, warmup)))
    peak = int(statistics.median(measurement.peak_bytes for measurement in measurements))
    return MemoryMeasurement(peak, measurements[0].method)


def machine_description() -> str:
    """Describe the machine in one line: CPU count, platform, Python, torch and transformers versions."""
    import os

    import torch
    import transformers

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    parts = [
        f"{cores} CPU cores ({platform.processor() or platform.machine()})",
        platform.platform(terse=True),
        f"Python {platform.python_version()}",
        f"torch {torch.__version__} ({torch.get_num_threads()} threads)",
        f"transformers {transformers.__version__}",
    ]
    if torch.cuda.is_available():
        parts.insert(0, torch.cuda.get_device_name(0))
    return ", ".join(parts)
