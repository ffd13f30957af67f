"""Ordered schema steps for the event log, each applied once and recorded, with sqlite-utils'
migrations (`sqlite_utils.migrations.Migrations`, its ``_sqlite_migrations`` table).

Never edit a step that has shipped: add a new one at the end of `MIGRATIONS`.
"""

from __future__ import annotations

import sqlite3

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

from vlmd.store import views, views_0002, views_0005

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
    ("0002_views", views_0002.STATEMENTS),
    # runs and items follow the tracker's rules for schedulings, resumes and cancels; runs gains
    # accuracy, shards and outcome, items the outcome class
    ("0003_views", (*(f"DROP VIEW {name}" for name in views.REPLACED), *views.STATEMENTS)),
    # items gains the serving columns (request_start, energy_j, the engine's KV cache and queue,
    # itl_ms, the clocks); server_samples shows the engine's /metrics reads
    ("0004_serving_views", views.STATEMENTS_0004),
    # items gains the item's category, split, circular group, scorer, options and reading;
    # model_summary CircularEval's accuracy and the unparsed answers; category_summary is new
    ("0005_benchmark_views", views_0005.STATEMENTS),
)


SET = "vlmd"  # the migration set's name in sqlite-utils' table
LEGACY_TABLE = "migrations"  # where vlmd recorded migrations before it used sqlite-utils'


def _migrations() -> Migrations:
    """`MIGRATIONS` as a sqlite-utils migration set, each step list one migration."""
    migrations = Migrations(SET)
    for name, steps in MIGRATIONS:
        def apply(db: Database, steps: tuple[str, ...] = steps) -> None:
            for step in steps:
                db.execute(step)
        migrations(name=name)(apply)
    return migrations


def _database(conn: sqlite3.Connection) -> Database:
    return Database(conn, recursive_triggers=False, execute_plugins=False)


def _legacy(db: Database) -> list[str]:
    if LEGACY_TABLE not in db.table_names():
        return []
    return [str(row[0]) for row in db.execute(
        "SELECT name FROM migrations ORDER BY rowid").fetchall()]


def applied(conn: sqlite3.Connection) -> list[str]:
    """Names of the migrations already applied to `conn`'s database, in order (read only)."""
    db = _database(conn)
    names = _legacy(db) + [m.name for m in _migrations().applied(db)]
    return list(dict.fromkeys(names))


def pending(conn: sqlite3.Connection) -> list[str]:
    """Names of the migrations this vlmd would apply to `conn`'s database (read only)."""
    done = set(applied(conn))
    return [name for name, _ in MIGRATIONS if name not in done]


def migrate(conn: sqlite3.Connection) -> list[str]:
    """Apply every pending migration in order, all in one ``BEGIN IMMEDIATE`` transaction (a
    savepoint each); returns the names it applied.

    A log whose migrations vlmd recorded in its own table (before sqlite-utils') has them
    moved to sqlite-utils' table in the same transaction. Raises RuntimeError if the database
    has a migration this version does not know (a newer vlmd wrote it).
    """
    db = _database(conn)
    migrations = _migrations()
    known = [name for name, _ in MIGRATIONS]
    conn.execute("BEGIN IMMEDIATE")
    try:
        legacy = _legacy(db)
        if legacy:  # adopt the old records: sqlite-utils' table knows them from now on
            migrations.ensure_migrations_table(db)
            db[Migrations.migrations_table].insert_all(  # type: ignore[union-attr]
                {"migration_set": SET, "name": name, "applied_at": "adopted"}
                for name in legacy if name not in {m.name for m in migrations.applied(db)})
            db.execute("DROP TABLE migrations")
        unknown = [m.name for m in migrations.applied(db) if m.name not in known]
        if unknown:
            raise RuntimeError(f"the log has migrations this vlmd does not know: "
                               f"{', '.join(unknown)}; upgrade vlmd")
        ran = [m.name for m in migrations.pending(db)]
        migrations.apply(db)
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return ran
