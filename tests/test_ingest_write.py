"""`EventLog.write`: a group of batches in one transaction answers as the batches appended one
by one would (duplicates in the log, or in an earlier batch of the group); `before_commit` sees
the answer before the COMMIT, and a failure there or in the COMMIT appends nothing."""

from __future__ import annotations

import sqlite3
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.events import body, completed, submitted
from vlmd.store import incoming
from vlmd.store.log import Appended, EventLog, Written

KEYS = st.integers(0, 9)  # few keys, so groups repeat them, within the group and with the log


def envelope(n: int) -> dict[str, Any]:
    e = completed("w", n)
    e["ts"] = 1_790_000_000.0 + n
    return e


def answers(done: list[Appended]) -> list[tuple[list[tuple[int, str]], int]]:
    return [([(e.seq, e.key) for e in d.events], d.duplicates) for d in done]


def expected(before: list[int], group: list[list[int]]
             ) -> list[tuple[list[tuple[int, str]], int]]:
    """The answers of appending `group`'s batches one by one after `before`, worked out here."""
    stored, seq, out = {envelope(n)["key"] for n in before}, len(before), []
    for batch in group:
        kept = []
        for n in batch:
            key = envelope(n)["key"]
            if key not in stored:
                stored.add(key)
                seq += 1
                kept.append((seq, key))
        out.append((kept, len(batch) - len(kept)))
    return out


@settings(max_examples=150, deadline=None)
@given(before=st.lists(KEYS, unique=True, max_size=5),
       group=st.lists(st.lists(KEYS, unique=True, max_size=6), min_size=1, max_size=4))
def test_a_group_answers_as_its_batches_appended_one_by_one(before: list[int],
                                                            group: list[list[int]]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        log = EventLog.open(Path(folder, "v.db"))
        log.append([envelope(n) for n in before], received=1.0)
        batches = [[envelope(n) for n in batch] for batch in group]
        seen: list[Written] = []
        written = log.write([incoming.all_typed(b) for b in batches], 2.0, seen.append)
        assert seen == [written]
        want = expected(before, group)
        assert answers(written.appended()) == want
        assert written.appended() is written.appended()  # built once
        last = len(before) + sum(len(kept) for kept, _ in want)
        assert written.last_seq == log.last_seq == last
        assert all(d.last_seq == last for d in written.appended())
        stored = [e for d in written.appended() for e in d.events]
        assert stored == list(log.read(after=len(before)))
        assert all(e.received == 2.0 and body(e) == envelope(int(body(e)["item"]))["body"]
                   for e in stored)
        log.close()


def test_before_commit_sees_the_seqs_and_the_log_as_it_was(tmp_path: Path) -> None:
    log = EventLog.open(tmp_path / "v.db")
    log.append([submitted("w")], received=1.0)
    during: list[tuple[list[int], int, int]] = []

    def before_commit(written: Written) -> None:
        reader = sqlite3.connect(tmp_path / "v.db")  # another connection: not committed yet
        count = reader.execute("SELECT count(*) FROM events").fetchone()[0]
        reader.close()
        during.append(([e.seq for e in written.appended()[0].events], log.last_seq, count))
    done = log.write([incoming.all_typed([envelope(1), envelope(2)])], 2.0, before_commit
                     ).appended()
    assert during == [([2, 3], 1, 1)]
    assert [e.seq for e in done[0].events] == [2, 3] and log.last_seq == 3


def test_a_failure_in_before_commit_rolls_the_group_back(tmp_path: Path) -> None:
    log = EventLog.open(tmp_path / "v.db")
    log.append([submitted("w")], received=1.0)

    def before_commit(written: Written) -> None:
        raise RuntimeError("stop")
    with pytest.raises(RuntimeError):
        log.write([incoming.all_typed([envelope(1)]), incoming.all_typed([envelope(2)])], 2.0,
                  before_commit)
    assert log.count() == 1 and log.last_seq == 1
    again = log.append_many([[envelope(1)], [envelope(2)]], 3.0)
    assert [[e.seq for e in d.events] for d in again] == [[2], [3]]
