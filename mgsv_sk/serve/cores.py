"""The cores this process may use: its CPU affinity, capped by the CPU quota of its control
group (a container's ``--cpus``, Kubernetes' ``limits.cpu``), which neither
``os.cpu_count()`` nor the affinity sees. A server in a 2-CPU container on a 64-core node
that sized itself by the node would run 64 batches at once in the time of 2."""

from __future__ import annotations

import math
import os
from pathlib import Path

__all__ = ["cgroup_cpu_quota", "usable_cores"]

_CGROUP = Path("/sys/fs/cgroup")


def _affinity() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _v2_quota(folder: Path) -> float | None:
    """``cpu.max`` of one cgroup v2 folder ("QUOTA PERIOD" or "max PERIOD"), in CPUs."""
    text = _read(folder / "cpu.max")
    if text is None:
        return None
    parts = text.split()
    try:
        if len(parts) != 2 or parts[0] == "max":
            return None
        quota, period = int(parts[0]), int(parts[1])
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def _v1_quota(folder: Path) -> float | None:
    """``cpu.cfs_quota_us`` over ``cpu.cfs_period_us`` of one cgroup v1 folder (-1: none)."""
    quota, period = _read(folder / "cpu.cfs_quota_us"), _read(folder / "cpu.cfs_period_us")
    try:
        q, p = int(quota or ""), int(period or "")
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None


def cgroup_cpu_quota(root: Path = _CGROUP, membership: str | None = None) -> float | None:
    """The tightest CPU quota (in CPUs) on this process's control group and its parents,
    cgroup v2 or v1, or None where there is none (or no cgroup file system).
    ``membership`` is ``/proc/self/cgroup``'s text (read when None)."""
    if membership is None:
        membership = _read(Path("/proc/self/cgroup")) or ""
    quotas: list[float] = []
    for line in membership.splitlines():
        fields = line.split(":", 2)
        if len(fields) != 3:
            continue
        hierarchy, controllers, where = fields
        if hierarchy == "0" and controllers == "":  # v2: one unified tree (hybrid: unified/)
            base = root / "unified" if (root / "unified").is_dir() else root
            read = _v2_quota
        elif "cpu" in controllers.split(","):  # v1: the cpu controller's own tree
            base = next((root / name for name in (controllers, "cpu", "cpu,cpuacct")
                         if (root / name).is_dir()), root / "cpu")
            read = _v1_quota
        else:
            continue
        folder = base / where.lstrip("/")
        # the cgroup and its parents up to the mount: each may cap it; inside a container
        # the namespace's root is the mount itself
        for level in (folder, *folder.parents):
            quota = read(level)
            if quota is not None:
                quotas.append(quota)
            if level == base:
                break
    return min(quotas) if quotas else None


def usable_cores() -> int:
    """The CPU affinity's cores, at most the cgroup quota rounded up; at least 1."""
    cores = _affinity()
    quota = cgroup_cpu_quota()
    if quota is not None:
        cores = min(cores, math.ceil(quota))
    return max(1, cores)
