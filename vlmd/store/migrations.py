"""Ordered schema steps for the event log, each applied once, in one transaction, and recorded.

Never edit a step that has shipped: add a new one at the end of `MIGRATIONS`.
"""

from __future__ import annotations

import sqlite3
import time

from vlmd.store import views

Migration = tuple[str, tuple[str, ...]]

MIGRATIONS: tuple[Migration, ...] = (
    ("0001_events", (
        """CREATE TABLE events (
            seq INTEGER PRIMARY KEY,
            key TEXT UNIQUE NOT NULL,
            run TEXT NOT NULL,
            kind TEXT NOT NULL,
            ts REAL NOT NULL,
            received REAL NOT NULL,
            body TEXT NOT NULL
        )""",
        "CREATE INDEX events_run_kind ON events (run, kind, seq)",
        "CREATE INDEX events_kind ON events (kind, seq)",
        """CREATE TRIGGER events_no_update BEFORE UPDATE ON events
           BEGIN SELECT RAISE(ABORT, 'events is append-only: UPDATE is not allowed'); END""",
        """CREATE TRIGGER events_no_delete BEFORE DELETE ON events
           BEGIN SELECT RAISE(ABORT, 'events is append-only: DELETE is not allowed'); END""",
    )),
    ("0002_views", views.STATEMENTS),
)


def applied(conn: sqlite3.Connection) -> list[str]:
    """Names of the migrations already applied to `conn`'s database, in order."""
    conn.execute("CREATE TABLE IF NOT EXISTS migrations (name TEXT PRIMARY KEY, applied REAL)")
    return [row[0] for row in conn.execute("SELECT name FROM migrations ORDER BY rowid")]


def migrate(conn: sqlite3.Connection) -> list[str]:
    """Apply every pending migration in order; returns the names it applied.

    Raises RuntimeError if the database has a migration this version does not know (a newer
    vlmd wrote it).
    """
    done = applied(conn)
    known = [name for name, _ in MIGRATIONS]
    unknown = [name for name in done if name not in known]
    if unknown:
        raise RuntimeError(f"the log has migrations this vlmd does not know: {', '.join(unknown)}; "
                           "upgrade vlmd")
    ran = []
    for name, steps in MIGRATIONS:
        if name in done:
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
            for step in steps:
                conn.execute(step)
            conn.execute("INSERT INTO migrations VALUES (?, ?)", (name, time.time()))
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        ran.append(name)
    return ran
