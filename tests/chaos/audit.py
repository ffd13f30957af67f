"""What a run left behind, read once it ended: the API's word, answers.csv, the log's views and
events, and its agents' spools; and the log's `PRAGMA integrity_check`."""

from __future__ import annotations

import contextlib
import csv
import io
import sqlite3
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from tests.chaos.record import ApiState, Row, RunRecord, RunsViewRow, SpoolAudit


@contextlib.contextmanager
def readonly(path: Path) -> Iterator[sqlite3.Connection]:
    """A read-only connection to the SQLite file at `path`, closed on exit."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        yield conn
    finally:
        conn.close()


def _rows(conn: sqlite3.Connection, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    return list(conn.execute(sql, args).fetchall())


def integrity(db: Path) -> str:
    """`PRAGMA integrity_check` of the log as it lies on disk."""
    with readonly(db) as conn:
        return "; ".join(row[0] for row in _rows(conn, "PRAGMA integrity_check"))


def audit_run(url: str, db: Path, spool_root: Path, run: str, phase: int) -> RunRecord:
    """Everything the chaos's checks need of `run`; vlmd must be up at `url` (the API state and
    answers.csv come from it), its log at `db`, the agents' spools under `spool_root`."""
    state = httpx.get(f"{url}/api/runs/{run}", timeout=30).raise_for_status().json()
    text = httpx.get(f"{url}/api/runs/{run}/answers.csv", timeout=30).raise_for_status().text
    answers = [Row(r["item"], r["answer"] or None, r["error"] or None)
               for r in csv.DictReader(io.StringIO(text))]
    with readonly(db) as conn:
        view = [Row(str(item), answer, error) for item, answer, error in _rows(
            conn, "SELECT item, answer, error FROM items WHERE run = ?", run)]
        completed = [str(r[0]) for r in _rows(
            conn, "SELECT json_extract(body, '$.item') FROM events "
                  "WHERE run = ? AND kind = 'item.completed'", run)]
        runs_view = [RunsViewRow(*r) for r in _rows(
            conn, "SELECT status, done, failed FROM runs WHERE run = ?", run)]
        logged = {str(r[0]) for r in _rows(conn, "SELECT key FROM events WHERE run = ?", run)}
        alerts = Counter(str(r[0]) for r in _rows(
            conn, "SELECT name FROM alerts WHERE run = ?", run))
    return RunRecord(
        phase=phase, run=run,
        api=ApiState(state.get("status"), state.get("done"), state.get("failed")),
        answers_csv=answers, items_view=view, completed=completed, runs_view=runs_view,
        spools=audit_spools(sorted(spool_root.glob(f"{run}-*/*.db")), logged),
        alerts=dict(alerts))


def audit_spools(spools: list[Path], logged: set[str]) -> SpoolAudit:
    """What the spool files `spools` hold, and which keys they ever held that `logged` lacks.

    A spool deletes what vlmd acknowledged; the `chaos_spooled` table (see `AUDIT_HOOK`)
    remembers every key filed into it. An event still in a put log counts as not yet filed."""
    pending = dead = audited = 0
    spooled: Counter[str] = Counter()
    for path in spools:
        with readonly(path) as conn:
            pending += _rows(conn, "SELECT count(*) FROM pending")[0][0]
            dead += _rows(conn, "SELECT count(*) FROM dead")[0][0]
            with contextlib.suppress(sqlite3.OperationalError):  # a spool without the audit
                spooled.update(str(r[0]) for r in _rows(conn, "SELECT key FROM chaos_spooled"))
                audited += 1
    puts = [path.with_name(path.name + ".puts") for path in spools]
    return SpoolAudit(
        files=len(spools), audited=audited, pending=pending, dead=dead,
        put_log_bytes=sum(p.stat().st_size for p in puts if p.exists()),
        spooled=len(spooled), logged=len(logged), lost=sorted(set(spooled) - logged),
        respooled_items=sum(c - 1 for k, c in spooled.items() if "/item/" in k))
