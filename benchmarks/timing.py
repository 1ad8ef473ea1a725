"""What every benchmark shares: the machine's name and a median of timed calls.

Kept apart from the benchmarks themselves so that importing it pulls in nothing heavy (no torch, no
gsplat): the stack and fan-out benchmarks run where only the services' own dependencies are installed.
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path


def median_ms(call: Callable[[], object], repeats: int) -> float:
    """Milliseconds of ``call()``, the median of ``repeats`` calls after one untimed warm-up call."""
    call()  # warm-up: compilation, caches
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times)


def cpu_name() -> str:
    """The CPU's model name from ``/proc/cpuinfo``, else what ``platform`` says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"
