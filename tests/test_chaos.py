"""Chaos: runs survive `kill -9` of vlmd, of their agents and wrappers, and lose nothing; and
the bugs it found, each pinned down alone.

The `chaos` fixture runs one chaos (`tests/chaos`: `--quick`, or the options `scripts/chaos`
puts in VLMD_CHAOS) in a child process and each slow test below checks one property of its
record. `scripts/chaos` runs exactly these: the slow tests of this module.
"""

from __future__ import annotations

import os
import select
import shlex
import signal
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import pytest

from tests.chaos import FAULT_KINDS, Record, RunRecord, parse_options
from tests.chaos.record import Row, RunsViewRow
from tests.events import typed_body
from tests.ports import free_port
from vlmd.live.liveness import STARTUP_GRACE_S, Liveness
from vlmd.store.log import Event
from vlmd_agent.evaluate import demo_data
from vlmd_agent.pipe import EXIT_ORPHANED, WrapperConfig

ROOT = Path(__file__).resolve().parent.parent
CHAOS_OPTIONS = "VLMD_CHAOS"  # scripts/chaos's options, as it passes them on
PHASES = pytest.mark.parametrize("phase", [1, 2], ids=["phase1-vlmd-kills",
                                                       "phase2-agent-faults"])


@pytest.fixture(scope="module")
def chaos(tmp_path_factory: pytest.TempPathFactory) -> Record:
    """The record of one chaos, done by `python -m tests.chaos` in a child process: that process
    must be the child subreaper of the agents a killed vlmd leaves, which pytest's is not."""
    options = parse_options(shlex.split(os.environ.get(CHAOS_OPTIONS, "--quick")))
    folder = tmp_path_factory.mktemp("chaos")
    path = folder / "record.json"
    child = subprocess.Popen([sys.executable, "-m", "tests.chaos", *options.argv(),
                              "--folder", str(folder), "--json", str(path)], cwd=ROOT)
    late = ""
    try:
        child.wait(options.budget_s())
    except subprocess.TimeoutExpired:
        late = f"the chaos took more than {options.budget_s():.0f} s; "
        child.send_signal(signal.SIGTERM)  # it stops vlmd and its agents, and says where it was
        try:
            child.wait(60)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    if not path.exists():
        pytest.fail(f"{late}the chaos exited {child.returncode} without a record; its output "
                    f"(captured) says why; files in {folder}")
    record = Record.load(path)
    if late or record.error:
        pytest.fail(f"{late}the chaos stopped early: {record.error}{_repeat(record)}")
    return record


def _repeat(record: Record) -> str:
    return (f" (files in {record.folder}; repeat: scripts/chaos "
            f"{shlex.join(record.options.argv())} --keep)")


def _run(record: Record, phase: int) -> RunRecord:
    found = [run for run in record.runs if run.phase == phase]
    assert len(found) == 1, f"the record holds {len(found)} runs of phase {phase}, not 1"
    return found[0]


def _once_each(seen: list[str], items: list[str]) -> str:
    """What keeps `seen` from holding each of `items` exactly once ('' when nothing)."""
    counts = Counter(seen)
    wrong = {"duplicated": sorted(i for i, n in counts.items() if n > 1),
             "missing": sorted(set(items) - set(counts)),
             "not in the dataset": sorted(set(counts) - set(items))}
    return "; ".join(f"{len(found)} item{'s' * (len(found) > 1)} {what} "
                     f"(e.g. {', '.join(found[:5])})" for what, found in wrong.items() if found)


def _answered_once_each(rows: list[Row], items: list[str]) -> str:
    """What keeps `rows` from holding each of `items` once, answered ('' when nothing)."""
    bad = [r for r in rows if not r.answer or r.error]
    unanswered = (f"{len(bad)} rows without an answer or with an error (e.g. {bad[0].item}: "
                  f"answer {bad[0].answer!r}, error {bad[0].error!r})") if bad else ""
    return "; ".join(filter(None, [_once_each([r.item for r in rows], items), unanswered]))


@pytest.mark.slow
@PHASES
def test_every_item_is_in_answers_csv_once_with_an_answer(chaos: Record, phase: int) -> None:
    run = _run(chaos, phase)
    wrong = _answered_once_each(run.answers_csv, chaos.items)
    assert not wrong, (f"{run.title}: answers.csv has {len(run.answers_csv)} rows for "
                       f"{len(chaos.items)} items: {wrong}{_repeat(chaos)}")


@pytest.mark.slow
@PHASES
def test_every_item_is_in_the_items_view_once_with_an_answer(chaos: Record, phase: int) -> None:
    run = _run(chaos, phase)
    wrong = _answered_once_each(run.items_view, chaos.items)
    assert not wrong, (f"{run.title}: the items view has {len(run.items_view)} rows for "
                       f"{len(chaos.items)} items: {wrong}{_repeat(chaos)}")


@pytest.mark.slow
@PHASES
def test_the_log_holds_one_item_completed_per_item(chaos: Record, phase: int) -> None:
    run = _run(chaos, phase)
    wrong = _once_each(run.completed, chaos.items)
    assert not wrong, (f"{run.title}: the log holds {len(run.completed)} item.completed events "
                       f"for {len(chaos.items)} items: {wrong}{_repeat(chaos)}")


@pytest.mark.slow
@PHASES
def test_each_run_finished_with_every_item_done_and_none_failed(chaos: Record,
                                                                phase: int) -> None:
    run, n = _run(chaos, phase), len(chaos.items)
    api = run.api
    assert (api.status, api.done, api.failed) == ("finished", n, 0), (
        f"{run.title}: GET /api/runs/{run.run} says {api.status}, done {api.done}/{n}, "
        f"failed {api.failed} (want finished, {n}/{n}, 0){_repeat(chaos)}")
    assert run.runs_view == [RunsViewRow("finished", n, 0)], (
        f"{run.title}: the runs view says {run.runs_view} (want one row: finished, done {n}, "
        f"failed 0), though the API agrees{_repeat(chaos)}")


@pytest.mark.slow
@PHASES
def test_no_event_is_lost_every_key_spooled_is_in_the_log(chaos: Record, phase: int) -> None:
    run = _run(chaos, phase)
    spools = run.spools
    assert spools.spooled > 0, (f"{run.title}: the spool audit saw no event key at all: did "
                                f"the agents load the audit hook?{_repeat(chaos)}")
    assert not spools.lost, (
        f"{run.title}: {len(spools.lost)} of the {spools.spooled:,} event keys its outboxes "
        f"spooled are not in the log (e.g. {', '.join(spools.lost[:5])}){_repeat(chaos)}")


@pytest.mark.slow
@PHASES
def test_every_spool_is_drained(chaos: Record, phase: int) -> None:
    run, shards = _run(chaos, phase), chaos.options.shards
    s = run.spools
    assert s.files >= shards and s.audited == s.files, (
        f"{run.title}: {s.files} spool files for {shards} agents, {s.audited} of them "
        f"audited: the audit misses spools{_repeat(chaos)}")
    assert (s.pending, s.dead, s.put_log_bytes) == (0, 0, 0), (
        f"{run.title}: its spools still hold {s.pending} pending events, {s.dead} dead ones "
        f"and {s.put_log_bytes} bytes in put logs after it ended{_repeat(chaos)}")


@pytest.mark.slow
def test_the_log_is_intact_after_each_crash_and_at_the_end(chaos: Record) -> None:
    checks = [(i.when, i.result) for i in chaos.integrity]
    want = [f"vlmd kill -9 #{k}" for k in range(1, chaos.options.daemon_kills + 1)] + ["the end"]
    assert [when for when, _ in checks] == want, (
        f"integrity_check ran at {[when for when, _ in checks]}, not at {want}{_repeat(chaos)}")
    bad = [f"{when}: {result}" for when, result in checks if result != "ok"]
    assert not bad, f"integrity_check of the log is not ok: {bad}{_repeat(chaos)}"


@pytest.mark.slow
def test_agents_orphaned_by_vlmd_kills_all_exited_0(chaos: Record) -> None:
    if chaos.options.daemon_kills:
        assert chaos.orphans, f"no agent was orphaned by the vlmd kills{_repeat(chaos)}"
    bad = {pid: status for pid, status in chaos.orphans.items() if status != 0}
    assert not bad, (f"{len(bad)} of {len(chaos.orphans)} orphaned agents did not exit 0 "
                     f"(pid: exit status, None: never reaped): {bad}{_repeat(chaos)}")


@pytest.mark.slow
def test_no_wrapper_outlives_its_killed_agent(chaos: Record) -> None:
    assert chaos.stray_wrappers == 0, (
        f"{chaos.stray_wrappers} wrappers still ran 5 s after their agent was killed "
        f"(a wrapper must exit when its watchdog dies){_repeat(chaos)}")


@pytest.mark.slow
def test_vlmd_was_killed_as_many_times_as_asked(chaos: Record) -> None:
    assert len(chaos.daemon_kills) == chaos.options.daemon_kills, (
        f"vlmd was killed {len(chaos.daemon_kills)} times, asked "
        f"{chaos.options.daemon_kills}{_repeat(chaos)}")


@pytest.mark.slow
def test_each_agent_fault_was_done_as_many_times_as_asked(chaos: Record) -> None:
    done = {kind: chaos.faults.get(kind, 0) for kind in FAULT_KINDS}
    asked = {kind: chaos.options.agent_faults for kind in FAULT_KINDS}
    assert done == asked, (f"agent faults done {done}, asked {asked} (a fault is skipped when "
                           f"its agent ends first){_repeat(chaos)}")


@pytest.mark.slow
@PHASES
def test_the_alerts_are_those_the_faults_cause(chaos: Record, phase: int) -> None:
    run = _run(chaos, phase)
    if phase == 1:  # agents lived on through vlmd's restarts: nothing to alert of
        assert run.alerts == {}, (f"{run.title}: alerts in the log {run.alerts}, want none"
                                  f"{_repeat(chaos)}")
        return
    want = {"wrapper_died": chaos.faults.get("wrapper kill -9", 0),
            "agent_exited": chaos.faults.get("agent kill -9", 0)}
    got = {name: run.alerts.get(name, 0) for name in want}
    assert got == want, (f"{run.title}: alerts in the log {run.alerts}; want {want} (one per "
                         f"wrapper kill -9, one per agent kill -9){_repeat(chaos)}")


@pytest.mark.slow
def test_vlmd_stops_cleanly_at_the_end(chaos: Record) -> None:
    assert chaos.stop_status == 0, (f"vlmd exited {chaos.stop_status} on SIGTERM at the end "
                                    f"(want 0; its stderr is in daemon-*.log){_repeat(chaos)}")




def test_a_wrapper_outlives_the_thread_that_forked_it_but_not_its_watchdog(
        tmp_path: Path) -> None:
    """trio forks the wrapper from a worker thread that exits after 10 s idle; with
    PR_SET_PDEATHSIG the wrapper was SIGKILLed then, in every run longer than that."""
    dataset = demo_data.build(tmp_path / "data", n=3)
    cfg = WrapperConfig(url=f"http://127.0.0.1:{free_port()}", run="r-lifeline",
                        model="demo:instant", dataset=str(dataset), spool=str(tmp_path / "spool"))
    read_fd, write_fd = os.pipe()
    started: list[subprocess.Popen[bytes]] = []
    first_line: list[bytes] = []

    def fork_then_exit() -> None:  # as trio's worker thread: fork, then go away
        started.append(subprocess.Popen(
            [sys.executable, "-m", "vlmd_agent.evaluate.wrapper", cfg.to_json()],
            pass_fds=(write_fd,),
            stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env={**os.environ, "VLMD_STATUS_FD": str(write_fd), "VLMD_TOKEN": "t"}))
        ready, _, _ = select.select([read_fd], [], [], 30)
        first_line.append(os.read(read_fd, 4096) if ready else b"")  # it is past its setup

    thread = threading.Thread(target=fork_then_exit)
    thread.start()
    thread.join()
    os.close(write_fd)
    wrapper = started[0]
    try:
        assert b'"state":"loading"' in first_line[0]
        with pytest.raises(subprocess.TimeoutExpired):  # vlmd is unreachable: it keeps trying
            wrapper.wait(1.5)
        os.close(read_fd)  # what the kernel does when the watchdog dies, however it dies
        assert wrapper.wait(10) == EXIT_ORPHANED
    finally:
        if wrapper.poll() is None:
            wrapper.kill()
            wrapper.wait()


def test_agents_known_only_from_the_log_get_a_grace_period_after_a_restart() -> None:
    """While vlmd was down the agents' outboxes backed off (up to 5 s between tries): a deadline
    of three heartbeats from the start said alert.agent_lost of healthy agents."""
    heartbeat = Event(1, "hb", "r1", "watchdog.heartbeat", 1.0, 1.0, typed_body(
        "watchdog.heartbeat",
        {"host": "gpu-1", "pid": 7, "wrapper_pid": 8, "wrapper_state": "running"}), "")
    book = Liveness(heartbeat_s=1.0)
    assert list(book.watch([heartbeat], now=100.0)) == [heartbeat]
    assert book.next_deadline() == 100.0 + 3.0 + STARTUP_GRACE_S
    assert book.expired(100.0 + 3.0 + STARTUP_GRACE_S - 0.01) == []
    book.observe([heartbeat._replace(seq=2, key="hb2")], now=200.0)  # live: no grace
    assert book.next_deadline() == 203.0
