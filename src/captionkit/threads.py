"""CPU threads: how many a heavy command uses, and waiting that does not steal CPU.

PyTorch's CPU default is one OpenMP thread per core, each spinning while it waits for the
others. Beside another busy job that oversubscribes the cores and the spinning threads take
CPU from the threads doing the work: measured 4-5x slower than one thread
(``benchmarks/threads.py``). captionkit's default is the CPUs this process may use (its CPU
affinity, capped by a cgroup CPU quota) with passive waiting (``OMP_WAIT_POLICY=PASSIVE``:
an idle OpenMP thread sleeps instead of spinning). ``--threads N`` or ``OMP_NUM_THREADS``
choose another count.

The wait policy is read once, when PyTorch's OpenMP runtime loads, so
:func:`prefer_passive_waiting` must run before ``import torch`` (the ``captionkit`` command
calls it first thing); the Python API leaves the environment alone, so set
``OMP_WAIT_POLICY=PASSIVE`` yourself before importing torch in a busy notebook.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CPU_MAX = Path("/sys/fs/cgroup/cpu.max")  # cgroup v2: "QUOTA PERIOD" or "max PERIOD"


def cgroup_cpu_limit(path: Path = CPU_MAX) -> float | None:
    """The CPUs a cgroup v2 quota allows this process (e.g. 1.5), or None without a quota."""
    try:
        quota, period = path.read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    try:
        return int(quota) / int(period)
    except (ValueError, ZeroDivisionError):
        return None


def available_cpus(cpu_max: Path = CPU_MAX) -> int:
    """The CPUs this process may use: its affinity mask, capped by a cgroup CPU quota."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        n = os.cpu_count() or 1
    limit = cgroup_cpu_limit(cpu_max)
    if limit is not None:
        n = min(n, max(1, math.floor(limit)))
    return max(1, n)


def default_threads(env: dict[str, str] | None = None) -> int:
    """``OMP_NUM_THREADS`` when set to a positive integer, else :func:`available_cpus`."""
    value = (os.environ if env is None else env).get("OMP_NUM_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else available_cpus()


def prefer_passive_waiting(env: dict[str, str] | None = None) -> None:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` unless the user chose a policy (before torch loads)."""
    (os.environ if env is None else env).setdefault("OMP_WAIT_POLICY", "PASSIVE")


def configure_threads(threads: int | None = None) -> int:
    """Use ``threads`` CPU threads for PyTorch's operators (default: :func:`default_threads`);
    returns the count set."""
    import torch

    n = default_threads() if threads is None else threads
    if n < 1:
        raise ValueError(f"threads must be at least 1, got {n}")
    torch.set_num_threads(n)
    return n
