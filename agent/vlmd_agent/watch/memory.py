"""RAM facts for the watchdog: the wrapper's process tree, the host, and the container's cgroup.

Files read at 20 Hz (cgroup counters, /proc/meminfo) are opened once and re-read with
``os.pread`` at offset 0: one system call per read instead of open/read/close.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MB = 1024 * 1024
_PAGE = os.sysconf("SC_PAGE_SIZE")
CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")
# cgroup v1 has no "unlimited" value: it reports the largest page-aligned long instead.
_V1_UNLIMITED = 1 << 62
# The process tree is found again every TREE_REFRESH_S; its members' RSS (their held-open statm)
# is read every sample. A child started between walks is counted from the next walk on, within
# TREE_REFRESH_S; one that exits is dropped at the next sample. A walk lists /proc and reads the
# parent of new pids only (`ProcessTable`); every FULL_WALK_EVERY walks it reads them all.
TREE_REFRESH_S = 1.0
FULL_WALK_EVERY = 10


class _Reader:
    """One file opened once; `read()` re-reads it from the start. A missing file reads as None."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._fd: int | None = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            self._fd = None

    def read(self, size: int = 65536) -> str | None:
        if self._fd is None:
            return None
        try:
            return os.pread(self._fd, size, 0).decode()
        except OSError:
            return None

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _field(text: str | None, name: str) -> int | None:
    """The integer after `name` in a "name value" per line file (memory.events, oom_control)."""
    for line in (text or "").splitlines():
        key, _, value = line.partition(" ")
        if key == name and value.strip().isdigit():
            return int(value)
    return None


def _int(text: str | None) -> int | None:
    return int(text) if text is not None and text.strip().isdigit() else None


@dataclass(frozen=True)
class CgroupPaths:
    """Where this process's memory cgroup lives: `version` 1 or 2 and its directory."""

    version: int
    directory: Path


def find_cgroup(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> CgroupPaths | None:
    """This process's memory cgroup from `proc_cgroup` (``/proc/self/cgroup``) under `root`.

    v1 when a hierarchy lists the ``memory`` controller and ``root/memory`` exists, else v2 when
    there is a ``0::`` line and ``root/cgroup.controllers`` exists. When the listed path is not
    visible (a container whose cgroup is mounted as its root) the mount's top is used.
    """
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(",") and (root / "memory").is_dir():
            return CgroupPaths(1, _visible(root / "memory", path))
    for line in lines:
        if line.startswith("0::") and (root / "cgroup.controllers").exists():
            return CgroupPaths(2, _visible(root, line[3:]))
    return None


def _visible(mount: Path, path: str) -> Path:
    inner = mount / path.strip().lstrip("/")
    return inner if inner.is_dir() else mount


class RamReader:
    """Reads RAM facts; keep one for the watchdog's life (it holds its files open)."""

    def __init__(self, cgroup: CgroupPaths | None = None, *, detect: bool = True,
                 meminfo: Path = Path("/proc/meminfo")) -> None:
        """`cgroup` None with `detect` finds this process's cgroup with `find_cgroup`."""
        self.cgroup = find_cgroup() if cgroup is None and detect else cgroup
        names = {1: ("memory.usage_in_bytes", "memory.limit_in_bytes", "memory.oom_control"),
                 2: ("memory.current", "memory.max", "memory.events")}
        d = self.cgroup.directory if self.cgroup else None
        self._cg = [_Reader(d / n) for n in names[self.cgroup.version]] if d and self.cgroup else []
        self._meminfo = _Reader(meminfo)
        self._tree_pid: int | None = None
        self._tree: dict[int, _Reader] = {}  # pid -> its /proc/<pid>/statm, held open
        self._tree_at = 0.0
        self._table = ProcessTable()

    def sample(self, pid: int | None) -> dict[str, Any]:
        """RAM now, in MB unless named otherwise.

        ``rss_mb`` of `pid` and its descendants (None without a live `pid`), ``host_used_mb``
        (total minus available), ``host_available_mb``, ``host_total_mb``, ``cgroup_usage_mb``,
        ``cgroup_limit_mb`` (None when unlimited) and ``oom_kills`` (a count; None where the
        kernel does not report it).
        """
        total, available = self._host()
        usage, limit, ooms = self._cgroup()
        return {
            "rss_mb": self._rss(pid),
            "host_used_mb": _mb(None if total is None or available is None else total - available),
            "host_available_mb": _mb(available),
            "host_total_mb": _mb(total),
            "cgroup_usage_mb": _mb(usage),
            "cgroup_limit_mb": _mb(limit),
            "oom_kills": ooms,
        }

    def tree_pids(self) -> list[int]:
        """The pids found by the last sample's process tree (for attributing GPU memory)."""
        return list(self._tree)

    def _host(self) -> tuple[int | None, int | None]:
        # "MemTotal: N kB\nMemFree: N kB\nMemAvailable: N kB\n..." (the kernel's order).
        words = (self._meminfo.read(512) or "").split(None, 9)[:9]
        kb = {k: int(v) * 1024 for k, v in zip(words[::3], words[1::3], strict=False)
              if v.isdigit()}
        return kb.get("MemTotal:"), kb.get("MemAvailable:")

    def _cgroup(self) -> tuple[int | None, int | None, int | None]:
        if not self._cg or self.cgroup is None:
            return None, None, None
        usage, limit, events = (r.read() for r in self._cg)
        lim = _int(limit)
        if lim is not None and lim >= _V1_UNLIMITED:
            lim = None
        return _int(usage), lim, _field(events, "oom_kill")

    def _rss(self, pid: int | None) -> float | None:
        now = time.monotonic()
        if pid != self._tree_pid or now - self._tree_at >= TREE_REFRESH_S:
            pids = self._table.tree(pid)
            for gone in self._tree.keys() - pids:
                self._tree.pop(gone).close()
            self._tree |= {p: _Reader(Path(f"/proc/{p}/statm")) for p in pids - self._tree.keys()}
            self._tree_pid, self._tree_at = pid, now
        total = 0
        # A held statm stays bound to its process: once it exits, reads fail even if the pid
        # is reused, so a stranger's memory is never counted.
        for p, statm in list(self._tree.items()):
            pages = statm.read(128)
            if pages is None:
                self._tree.pop(p).close()
                continue
            total += int(pages.split()[1]) * _PAGE
        return _mb(total) if self._tree else None

    def close(self) -> None:
        """Close the files held open."""
        for r in [*self._cg, self._meminfo, *self._tree.values()]:
            r.close()
        self._tree.clear()


class ProcessTable:
    """Parent pids of every process, for finding a process tree; re-read only where needed.

    A full walk reads ``/proc/*/stat`` of every process on the host (~8 us each); done once a
    second that is most of the sampler's RAM cost. So a walk lists ``/proc`` and reads the
    parent of pids it has not seen, and again of pids whose parent has gone (they were
    reparented); every `full_every` walks it reads every process. A pid that was reused since
    the last walk (the pid space wrapped around within a walk's interval) is read again at the
    next full walk.
    """

    def __init__(self, full_every: int = FULL_WALK_EVERY) -> None:
        self.full_every = full_every
        self._parents: dict[int, int] = {}
        self._walks = 0
        self.reads = 0  # ``/proc/PID/stat`` reads so far (to show the saving)

    def tree(self, pid: int | None) -> set[int]:
        """`pid` and its descendants (empty if it is gone or None)."""
        if pid is None:
            return set()
        full = self._walks % self.full_every == 0
        self._walks += 1
        listed = {int(name) for name in os.listdir("/proc") if name.isdigit()}
        known = {} if full else {p: pp for p, pp in self._parents.items() if p in listed}
        parents: dict[int, int] = {}
        for p in listed:
            pp = known.get(p)
            if pp is None or pp not in listed:  # new, or its parent exited: read it again
                self.reads += 1
                pp = _ppid(p)
                if pp is None:
                    continue  # exited since listed
            parents[p] = pp
        self._parents = parents
        if pid not in parents:
            return set()
        children: dict[int, list[int]] = {}
        for p, pp in parents.items():
            children.setdefault(pp, []).append(p)
        found, todo = {pid}, [pid]
        while todo:
            for child in children.get(todo.pop(), ()):
                if child not in found:
                    found.add(child)
                    todo.append(child)
        return found


def _ppid(pid: int) -> int | None:
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None  # exited since listed
    try:
        stat = os.read(fd, 512)
    except OSError:
        return None
    finally:
        os.close(fd)
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after the last.
    fields = stat[stat.rfind(b")") + 2:].split(None, 2)
    return int(fields[1]) if len(fields) > 1 else None


def _mb(n: int | None) -> float | None:
    return None if n is None else round(n / MB, 3)


_default: RamReader | None = None


def ram_sample(pid: int | None) -> dict[str, Any]:
    """`RamReader.sample` on a reader for this process's own cgroup, made on first use."""
    global _default
    if _default is None:
        _default = RamReader()
    return _default.sample(pid)
