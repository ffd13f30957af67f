"""RAM facts: fake cgroup v1 and v2 trees, the real cgroup here, and a real child's RSS."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import psutil
import pytest

from vlmd_agent.watch import memory
from vlmd_agent.watch.memory import CgroupPaths, ProcessTable, RamReader, find_cgroup, ram_sample

MB = 1024 * 1024
V1_UNLIMITED = "9223372036854771712"


def _write(directory: Path, files: dict[str, str]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text)


def _v1(tmp_path: Path, limit: str = str(2048 * MB),
        oom: str = "oom_kill 3\n") -> tuple[Path, Path]:
    root, proc = tmp_path / "cg", tmp_path / "cgroup"
    _write(root / "memory" / "docker" / "abc", {
        "memory.usage_in_bytes": f"{512 * MB}\n", "memory.limit_in_bytes": f"{limit}\n",
        "memory.oom_control": f"oom_kill_disable 0\nunder_oom 0\n{oom}"})
    (root / "unified").mkdir()
    proc.write_text("5:cpu,cpuacct:/docker/abc\n4:memory:/docker/abc\n1:name=systemd:/\n0::/\n")
    return root, proc


def _v2(tmp_path: Path, limit: str = "max") -> tuple[Path, Path]:
    root, proc = tmp_path / "cg2", tmp_path / "cgroup2"
    _write(root, {"cgroup.controllers": "cpu io memory pids\n"})
    _write(root / "system.slice" / "run.scope", {
        "memory.current": f"{300 * MB}\n", "memory.max": f"{limit}\n",
        "memory.events": "low 0\nhigh 0\nmax 7\noom 2\noom_kill 1\noom_group_kill 0\n"})
    proc.write_text("0::/system.slice/run.scope\n")
    return root, proc


def _reader(root: Path, proc: Path) -> RamReader:
    return RamReader(find_cgroup(root, proc))


def test_cgroup_v1_usage_limit_and_oom_kills(tmp_path: Path) -> None:
    root, proc = _v1(tmp_path)
    assert find_cgroup(root, proc) == CgroupPaths(1, root / "memory" / "docker" / "abc")
    with closing(_reader(root, proc)) as r:
        ram = r.sample(None)
    assert (ram["cgroup_usage_mb"], ram["cgroup_limit_mb"], ram["oom_kills"]) == (512.0, 2048.0, 3)


def test_cgroup_v1_unlimited_is_none_and_old_kernels_have_no_oom_count(tmp_path: Path) -> None:
    root, proc = _v1(tmp_path, limit=V1_UNLIMITED, oom="")
    with closing(_reader(root, proc)) as r:
        ram = r.sample(None)
    assert (ram["cgroup_usage_mb"], ram["cgroup_limit_mb"], ram["oom_kills"]) == (512.0, None, None)


def test_cgroup_v2_usage_unlimited_and_oom_kill_counter(tmp_path: Path) -> None:
    root, proc = _v2(tmp_path)
    assert find_cgroup(root, proc) == CgroupPaths(2, root / "system.slice" / "run.scope")
    with closing(_reader(root, proc)) as r:
        ram = r.sample(None)
    assert (ram["cgroup_usage_mb"], ram["cgroup_limit_mb"], ram["oom_kills"]) == (300.0, None, 1)


def test_cgroup_v2_limit(tmp_path: Path) -> None:
    root, proc = _v2(tmp_path, limit=str(8 * 1024 * MB))
    with closing(_reader(root, proc)) as r:
        assert r.sample(None)["cgroup_limit_mb"] == 8192.0


def test_cgroup_files_are_opened_once_and_reread(tmp_path: Path) -> None:
    root, proc = _v2(tmp_path)
    events = root / "system.slice" / "run.scope" / "memory.events"
    me = psutil.Process()
    with closing(_reader(root, proc)) as r:
        r.sample(None)
        fds = me.num_fds()
        events.write_text("low 0\nhigh 0\nmax 9\noom 4\noom_kill 2\noom_group_kill 0\n")
        (root / "system.slice" / "run.scope" / "memory.current").write_text(f"{310 * MB}\n")
        ram = r.sample(None)
        assert me.num_fds() == fds
    assert (ram["oom_kills"], ram["cgroup_usage_mb"]) == (2, 310.0)


def test_cgroup_path_not_visible_uses_the_mount_itself(tmp_path: Path) -> None:
    # A container sees its own cgroup at the mount point, under a host path it cannot see.
    root, proc = _v2(tmp_path)
    proc.write_text("0::/kubepods/pod-1/ctr\n")
    assert find_cgroup(root, proc) == CgroupPaths(2, root)


def test_no_cgroup_gives_none_values(tmp_path: Path) -> None:
    assert find_cgroup(tmp_path, tmp_path / "missing") is None
    with closing(RamReader(None, detect=False)) as r:
        ram = r.sample(None)
    assert (ram["cgroup_usage_mb"], ram["cgroup_limit_mb"], ram["oom_kills"]) == (None,) * 3
    assert ram["host_total_mb"] is not None and ram["host_total_mb"] > 0


def test_real_sample_has_host_and_cgroup_facts() -> None:
    ram = ram_sample(os.getpid())
    assert set(ram) == {"rss_mb", "host_used_mb", "host_available_mb", "host_total_mb",
                        "cgroup_usage_mb", "cgroup_limit_mb", "oom_kills"}
    assert ram["rss_mb"] is not None and 5 < ram["rss_mb"] < ram["host_total_mb"]
    assert ram["host_used_mb"] + ram["host_available_mb"] == pytest.approx(ram["host_total_mb"])
    assert ram["cgroup_usage_mb"] is not None and ram["cgroup_usage_mb"] > 0
    assert ram["oom_kills"] is None or ram["oom_kills"] >= 0


def test_no_pid_or_a_dead_pid_has_no_rss() -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with closing(RamReader()) as r:
        assert r.sample(None)["rss_mb"] is None
        assert r.sample(dead.pid)["rss_mb"] is None


HOG = ("import sys; b = b'x' * (120 * 1024 * 1024); print('ready', flush=True); "
       "sys.stdin.read()")


@pytest.fixture
def grandchild_hog() -> Iterator[subprocess.Popen[str]]:
    """A shell child whose own child holds 120 MB (touched) until stdin closes."""
    cmd = f"{sys.executable} -c \"{HOG}\"; true"  # `; true` keeps sh from exec-ing python
    proc = subprocess.Popen(["sh", "-c", cmd], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    yield proc
    assert proc.stdin is not None
    proc.stdin.close()
    proc.wait(timeout=10)
    proc.stdout.close()


def test_rss_counts_the_whole_process_tree(grandchild_hog: subprocess.Popen[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "TREE_REFRESH_S", 0.0)
    with closing(RamReader()) as r:
        alone = psutil.Process().memory_info().rss / MB
        tree = r.sample(os.getpid())["rss_mb"]
        shell_tree = r.sample(grandchild_hog.pid)["rss_mb"]
        pids = r.tree_pids()
    assert tree is not None and shell_tree is not None
    assert shell_tree > 120
    assert tree >= alone + 120
    assert len(pids) == 2 and grandchild_hog.pid in pids


def test_a_child_started_between_tree_walks_is_counted_within_a_second_and_dropped_on_exit(
        ) -> None:
    assert memory.TREE_REFRESH_S <= 1.0
    with closing(RamReader()) as r:
        # walks the tree now: the hog below is not in it yet (pytest's other children may be)
        base = r.sample(os.getpid())["rss_mb"] or 0.0
        child = subprocess.Popen([sys.executable, "-c", HOG], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True)
        try:
            assert child.stdout is not None and child.stdout.readline() == "ready\n"
            born = time.monotonic()
            while child.pid not in r.tree_pids():
                assert time.monotonic() - born < memory.TREE_REFRESH_S + 0.5
                time.sleep(0.05)
                r.sample(os.getpid())
            assert (r.sample(os.getpid())["rss_mb"] or 0) >= base + 120
        finally:
            assert child.stdin is not None
            child.stdin.close()
            child.wait(timeout=10)
            child.stdout.close()  # type: ignore[union-attr]
        rss = r.sample(os.getpid())["rss_mb"]  # at once, not at the next walk
        assert child.pid not in r.tree_pids()
        assert rss is not None and rss < base + 60


def test_a_walk_reads_only_new_pids_and_every_full_walk_reads_all() -> None:
    table = ProcessTable(full_every=3)
    me = os.getpid()
    before = table.tree(me)  # a full walk: every process read; pytest's children are in it
    assert me in before
    first = table.reads
    assert first >= len([n for n in os.listdir("/proc") if n.isdigit()]) - 5
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                             stdin=subprocess.PIPE)
    try:
        assert table.tree(me) - before == {child.pid}
        assert table.reads - first < first / 2  # the new child and a few others
        # A reused pid would keep the parent read for its previous process; the full walk
        # (every 3rd here) reads it again.
        table._parents[child.pid] = 1
        assert child.pid not in table.tree(me)
        assert child.pid in table.tree(me)
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(timeout=10)
    assert child.pid not in table.tree(me)
    assert table.tree(child.pid) == set()


def test_a_grandchild_whose_parent_exits_leaves_the_tree() -> None:
    table = ProcessTable()
    me = os.getpid()
    before = table.tree(me)  # pytest's other children, if any
    shell = subprocess.Popen(["sh", "-c", "sleep 30 & echo $!; read x"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    assert shell.stdout is not None and shell.stdin is not None
    sleeper = int(shell.stdout.readline())
    try:
        assert table.tree(me) - before == {shell.pid, sleeper}
        shell.stdin.close()
        shell.wait(timeout=10)  # the sleeper is reparented (to init or a subreaper)
        assert not table.tree(me) & {shell.pid, sleeper}
    finally:
        os.kill(sleeper, 9)
        shell.stdout.close()
