"""The wrapper reports to its watchdog in status lines; the watchdog scores and spools them.

A real wrapper-side `Status` in a child process, a real pipe, the watchdog's `read_lines` and
`spool_report`, and a real spool (`Outbox`) on disk.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio

from vlmd_agent import wire
from vlmd_agent.evaluate import datasets, demo_data
from vlmd_agent.evaluate.backends import load_backend
from vlmd_agent.evaluate.wrapper import item_event, run_item
from vlmd_agent.outbox.spool import Outbox
from vlmd_agent.pipe import EXIT_ORPHANED, WrapperConfig, scored_event
from vlmd_agent.watch.watchdog import read_lines, spool_report

WRITER = """
import os, signal, sys
from vlmd_agent.evaluate import datasets
from vlmd_agent.evaluate.backends import load_backend
from vlmd_agent.evaluate.wrapper import run_item
from vlmd_agent.pipe import Status, WrapperConfig
cfg = WrapperConfig(url="http://127.0.0.1:9", run="r-lines", model="demo:instant:0",
                    dataset=sys.argv[2], spool="-", shard="0/1")
status, backend = Status(int(sys.argv[1])), load_backend("demo:instant:0")
status.send("ready", total=0, todo=0)
for item in datasets.load(sys.argv[2]).items:
    status.item(run_item(cfg, item, backend))
os.kill(os.getpid(), signal.SIGKILL)  # dies at once: no flush, no atexit, nothing after
"""


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return demo_data.build(tmp_path_factory.mktemp("data"), n=40)


def test_every_item_line_written_before_the_wrapper_was_killed_is_spooled(
        dataset: Path, tmp_path: Path) -> None:
    read_fd, write_fd = os.pipe()
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(write_fd), str(dataset)],
                              pass_fds=(write_fd,))
    os.close(write_fd)
    assert writer.wait(60) == -signal.SIGKILL  # every line is written, nothing read yet
    box = Outbox(tmp_path / "wrapper.db", "http://127.0.0.1:9", "t")  # not started: keeps all
    states: list[str] = []

    def on_line(line: bytes) -> None:
        status = json.loads(line)
        states.append(status["state"])
        spool_report(box, "r-lines", status)

    trio.run(read_lines, read_fd, on_line, 0.01)  # returns at the end of the pipe
    try:
        assert states == ["ready"] + ["item"] * 40
        assert box.backlog() == 40
        rows = box._db.execute("SELECT event FROM pending ORDER BY id").fetchall()
        events = [json.loads(row[0]) for row in rows]
    finally:
        box.close(flush_timeout=0)
    items = datasets.load(dataset).items
    assert [e["key"] for e in events] == [f"r-lines/item/{i.id}/ok" for i in items]
    assert all(wire.event_errors(e, 0, time.time()) == [] for e in events)
    assert {e["body"]["shard"] for e in events} == {"0/1"}
    assert {e["body"]["score"] for e in events} <= {0.0, 1.0}


@pytest.mark.parametrize("answer", ["A", ("A", "B")])
def test_an_outcome_sent_as_a_line_scores_as_the_wrappers_own_event(
        dataset: Path, answer: str | tuple[str, ...]) -> None:
    """JSON turns the references' tuple into a list and keeps the choices: the score and the
    event are the same as the wrapper builds in-process (`item_event`)."""
    cfg = WrapperConfig(url="http://127.0.0.1:9", run="r-same", model="demo:instant:0",
                        dataset=str(dataset), spool="-", max_new_tokens=8)
    backend = load_backend("demo:instant:0")
    for item in datasets.load(dataset).items[:10]:
        item = datasets.Item(**{**item.__dict__, "answer": answer, "scorer": "mcq"})
        outcome = run_item(cfg, item, backend)
        line = json.loads(json.dumps({"state": "item", "outcome": outcome}))
        assert scored_event("r-same", line["outcome"]) == scored_event("r-same", outcome)
        event = item_event(cfg, item, backend)
        assert list(event["body"]) == list(scored_event("r-same", outcome)["body"])
        assert event["body"]["score"] == (1.0 if event["body"]["answer"] in answer else 0.0)


def test_a_line_that_cannot_be_spooled_is_logged_not_raised(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    box = Outbox(tmp_path / "wrapper.db", "http://127.0.0.1:9", "t")
    try:
        with caplog.at_level(logging.ERROR, logger="vlmd_agent.watch.watchdog"):
            spool_report(box, "r-bad", {"state": "item", "outcome": {"kind": "item.completed"}})
            spool_report(box, "r-bad", {"state": "event", "event": {"key": "k", "run": "r-bad"}})
        assert box.backlog() == 0
        assert "cannot be spooled (KeyError" in caplog.text
        assert "not a valid event" in caplog.text
    finally:
        box.close(flush_timeout=0)


async def test_lines_are_read_by_polling_and_a_line_cut_across_writes_is_whole() -> None:
    read_fd, write_fd = os.pipe()
    got: list[tuple[bytes, float]] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(read_lines, read_fd, lambda line: got.append((line, time.monotonic())),
                           0.2)
        await trio.sleep(0.05)
        written = time.monotonic()
        os.write(write_fd, b'{"state": "ite')
        await trio.sleep(0.01)
        os.write(write_fd, b'm"}\n{"state": "done"}\n')
        with trio.fail_after(5):
            while len(got) < 2:
                await trio.sleep(0.01)
        os.close(write_fd)  # the end of the pipe ends the reader
    assert [line for line, _ in got] == [b'{"state": "item"}', b'{"state": "done"}']
    assert got[0][1] - written < 0.2 + 0.1  # by the next poll


def test_a_wrapper_whose_watchdog_is_gone_exits_at_its_next_item(dataset: Path) -> None:
    """Nobody would spool what it evaluates: it exits as its lifeline thread makes it."""
    read_fd, write_fd = os.pipe()
    os.close(read_fd)  # what the kernel does when the watchdog dies
    script = WRITER.replace('status.send("ready", total=0, todo=0)\n', "")
    writer = subprocess.run([sys.executable, "-c", script, str(write_fd), str(dataset)],
                            pass_fds=(write_fd,), capture_output=True, text=True, timeout=60)
    os.close(write_fd)
    assert writer.returncode == EXIT_ORPHANED
    assert "the watchdog is gone" in writer.stderr and "Traceback" not in writer.stderr


async def test_a_backlog_of_lines_leaves_the_watchdogs_other_tasks_turns() -> None:
    """A fast model's backlog (here 1,000 lines at once) is handled in turns, so sampling and
    heartbeats are not held up while it is spooled."""
    read_fd, write_fd = os.pipe()
    os.write(write_fd, b'{"state": "item"}\n' * 1000)
    os.close(write_fd)
    got: list[bytes] = []
    seen: list[int] = []

    async def other_task() -> None:
        while len(got) < 1000:
            seen.append(len(got))
            await trio.sleep(0)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(other_task)
        nursery.start_soon(read_lines, read_fd, got.append, 0.01)
    assert len(got) == 1000
    assert any(0 < n < 1000 for n in seen)  # it ran between lines, not only before and after
