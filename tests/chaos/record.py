"""What a chaos did and what it found, as `python -m tests.chaos` writes it (JSON) for the
tests to judge: facts only, no verdicts."""

from __future__ import annotations

from pathlib import Path

import msgspec

from tests.chaos.options import Options

FAULT_KINDS = ("wrapper kill -9", "agent kill -9", "wrapper SIGSTOP", "agent SIGSTOP")
PHASES = {1: "phase 1: vlmd kill -9", 2: "phase 2: agent faults"}


class Row(msgspec.Struct, array_like=True):
    """One item's row in answers.csv or the `items` view (None: an empty field or NULL)."""

    item: str
    answer: str | None
    error: str | None


class ApiState(msgspec.Struct):
    """The run as `GET /api/runs/RUN` said at the end (None: a field it did not send)."""

    status: str | None
    done: int | None
    failed: int | None


class RunsViewRow(msgspec.Struct, array_like=True):
    """The run's row in the `runs` view."""

    status: str
    done: int
    failed: int


class SpoolAudit(msgspec.Struct):
    """The run's outbox spools at the end, and every event key they were ever given (from the
    `chaos_spooled` audit table) against the keys the log holds for the run."""

    files: int  # spool files of the run's agents
    audited: int  # of them, those that hold the audit table
    pending: int  # events still waiting to be sent
    dead: int  # events given up on
    put_log_bytes: int  # bytes left in put logs (events not yet filed into a spool)
    spooled: int  # distinct keys ever spooled
    logged: int  # events of the run in the log
    lost: list[str]  # keys spooled but not in the log
    respooled_items: int  # item events spooled again after a crash (deduplicated by key)


class RunRecord(msgspec.Struct):
    """One run, once it ended, as the API, the log's views and its agents' spools show it."""

    phase: int
    run: str
    api: ApiState
    answers_csv: list[Row]
    items_view: list[Row]
    completed: list[str]  # the item of each item.completed event the log holds for the run
    runs_view: list[RunsViewRow]
    spools: SpoolAudit
    alerts: dict[str, int]  # alerts in the log, by name (`wrapper_died`, ...)

    @property
    def title(self) -> str:
        """The run and its phase, to begin a message with."""
        return f"run {self.run} ({PHASES[self.phase]})"


class Integrity(msgspec.Struct, array_like=True):
    """`PRAGMA integrity_check` of the log as it lay on disk at one moment."""

    when: str
    result: str


class Record(msgspec.Struct):
    """Everything one chaos did and found. `error` says why it stopped early, if it did."""

    options: Options
    folder: str
    items: list[str]  # the dataset's item ids: each run evaluates them all
    runs: list[RunRecord] = msgspec.field(default_factory=list)
    daemon_kills: list[float] = msgspec.field(default_factory=list)  # progress at each kill
    downtime_s: list[float] = msgspec.field(default_factory=list)
    integrity: list[Integrity] = msgspec.field(default_factory=list)
    faults: dict[str, int] = msgspec.field(default_factory=dict)  # by kind, those done
    stops_s: dict[str, list[float]] = msgspec.field(default_factory=dict)
    orphans: dict[int, int | None] = msgspec.field(default_factory=dict)  # pid: exit status
    stray_wrappers: int = 0  # wrappers still alive 5 s after their agent was killed
    stop_status: int | None = None  # vlmd's exit status after SIGTERM at the end
    elapsed_s: float = 0.0
    error: str | None = None

    def save(self, path: Path) -> None:
        """Write this record to `path` as JSON."""
        path.write_bytes(msgspec.json.encode(self))

    @classmethod
    def load(cls, path: Path) -> Record:
        """The record `save` wrote to `path`."""
        return msgspec.json.decode(path.read_bytes(), type=cls)
