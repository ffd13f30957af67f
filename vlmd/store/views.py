"""SQL views over ``events`` for Datasette and exports, each the SQL twin of a Python fold.

`runs` agrees with `vlmd.projections.tracker` (except the time-windowed rate and ETA, and
``finished_at`` when a ``run.submitted`` changes the shard count after shards ended), `items`
with `vlmd.projections.answers` (the served rows, outcome class included), `model_summary`
with `vlmd.projections.summary` (the same linear-interpolation percentiles), `samples` (from
`vlmd.store.views_0002`) with `vlmd.projections.gpus.sample_rows`, and `alerts` with the
tracker's alert counts. ``tests/test_views.py`` checks each pair on the same log, and
``tests/test_golden.py`` the fold, these views through Datasette and the dashboard on the golden
corpus.

Migration ``0003_views`` drops the `REPLACED` views of 0002 and creates `STATEMENTS`; migration
``0004_serving_views`` replaces `items` with `ITEMS_0004` (the serving columns: when each
request started, its energy, the engine's KV cache and queue, the ITL gaps, the clocks and
sources) and adds `SERVER_SAMPLES` (the engine's /metrics reads, the twin of
`vlmd.projections.gpus.server_rows`); ``0005_benchmark_views`` (`vlmd.store.views_0005`)
extends `items` and `model_summary` and adds `category_summary`. Never edit a statement once
shipped: to change a view, freeze these (as `views_0002` is) and add a migration.
"""

from __future__ import annotations

# The same as vlmd.projections.summary's (a test checks); not imported from there because the
# log imports the migrations, which import this module, before the projections can load.
METRICS = ("ttft_ms", "tpot_ms", "e2e_ms", "vram_peak_delta_mb")
QUANTILES = (("p50", 0.50), ("p90", 0.90), ("p99", 0.99))
CORRECT_AT = 0.5  # vlmd.projections.answers.CORRECT_AT (a test checks)

_ITEMS = f"""CREATE VIEW items AS
WITH item_events AS (
    SELECT seq, run, kind, ts, body, CAST(json_extract(body, '$.item') AS TEXT) AS item
    FROM events WHERE kind IN ('item.completed', 'item.failed')
), ranked AS (
    -- the tracker's item-outcome rule: the latest completion, else the latest failure
    SELECT *,
        row_number() OVER (PARTITION BY run, item
                           ORDER BY kind = 'item.completed' DESC, seq DESC) AS pick,
        min(seq) OVER (PARTITION BY run, item) AS first_seq,
        count(*) OVER (PARTITION BY run, item) AS attempts
    FROM item_events
)
SELECT run, item,
    json_extract(body, '$.question') AS question,
    CASE WHEN kind = 'item.completed' THEN json_extract(body, '$.answer') END AS answer,
    json_extract(body, '$.expected') AS expected,
    json_extract(body, '$.score') AS score,
    json_extract(body, '$.ttft_ms') AS ttft_ms,
    json_extract(body, '$.tpot_ms') AS tpot_ms,
    json_extract(body, '$.e2e_ms') AS e2e_ms,
    json_extract(body, '$.input_tokens') AS input_tokens,
    json_extract(body, '$.output_tokens') AS output_tokens,
    json_extract(body, '$.vram_before_mb') AS vram_before_mb,
    json_extract(body, '$.vram_peak_delta_mb') AS vram_peak_delta_mb,
    CASE WHEN kind = 'item.failed'
         THEN json_extract(body, '$.reason') || ': ' || json_extract(body, '$.message') END
        AS error,
    CASE WHEN kind = 'item.failed' THEN 'failed'
         WHEN json_extract(body, '$.score') IS NULL THEN 'unscored'
         WHEN json_extract(body, '$.score') >= {CORRECT_AT} THEN 'correct'
         ELSE 'wrong' END AS outcome,
    CASE WHEN kind = 'item.failed' THEN json_extract(body, '$.reason') END AS reason,
    json_extract(body, '$.shard') AS shard,
    ts, seq, first_seq, attempts
FROM ranked WHERE pick = 1 ORDER BY first_seq"""

# The tracker's fold, said in SQL: each field is "the latest event that sets it", by seq.
# `marks` are the events that set or clear the run-wide end: a start, a resume and a counted
# scheduling clear it; a run-wide end sets it (every cancel is run-wide). A scheduling counts
# unless the run is cancelled at that point and it is no resume.
_RUNS = """CREATE VIEW runs AS
WITH base AS (
    SELECT run, max(seq) AS last_seq, count(*) AS events FROM events GROUP BY run
), ends AS (
    SELECT run, seq, ts, substr(kind, 5) AS status,
        coalesce(json_extract(body, '$.shard'), '') AS shard
    FROM events WHERE kind IN ('run.finished', 'run.failed', 'run.cancelled')
), raw_marks AS (
    SELECT run, seq, CASE
            WHEN kind = 'run.started' THEN 'start'
            WHEN kind = 'run.scheduled' AND json_extract(body, '$.resume') THEN 'resume'
            WHEN kind = 'run.scheduled' THEN 'schedule'
            ELSE substr(kind, 5) END AS mark
    FROM events WHERE kind IN ('run.started', 'run.scheduled', 'run.cancelled')
        OR (kind IN ('run.finished', 'run.failed')
            AND coalesce(json_extract(body, '$.shard'), '') = '')
), marks AS (
    SELECT m.* FROM raw_marks AS m WHERE m.mark != 'schedule'
        OR coalesce((SELECT p.mark FROM raw_marks AS p WHERE p.run = m.run AND p.seq < m.seq
                     AND p.mark != 'schedule' ORDER BY p.seq DESC LIMIT 1), '') != 'cancelled'
), scheduled AS (
    SELECT e.run, e.seq, e.body FROM marks AS m JOIN events AS e ON e.seq = m.seq
    WHERE m.mark IN ('schedule', 'resume')
), shard_events AS (
    SELECT run, seq, coalesce(nullif(json_extract(body, '$.shard'), ''), '0/1') AS shard,
        'running' AS status
    FROM events WHERE kind = 'run.started'
    UNION ALL
    SELECT run, seq, shard, status FROM ends WHERE shard != '' AND status != 'cancelled'
    UNION ALL
    SELECT s.run, s.seq, j.value || '/' || json_extract(s.body, '$.of'), 'scheduled'
    FROM scheduled AS s, json_each(s.body, '$.shards') AS j
), shard_states AS (
    -- a shard's latest own event, or a later run-wide end (which ends every shard it saw)
    SELECT run, shard, status FROM (
        SELECT run, shard, status,
            row_number() OVER (PARTITION BY run, shard ORDER BY seq DESC) AS k FROM (
                SELECT run, seq, shard, status FROM shard_events
                UNION ALL
                SELECT s.run, e.seq, s.shard, e.status
                FROM (SELECT DISTINCT run, shard FROM shard_events) AS s
                JOIN ends AS e ON e.run = s.run AND e.shard = '' AND e.status != 'cancelled'))
    WHERE k = 1
), folded AS (
    SELECT b.*,
        (SELECT body FROM events WHERE run = b.run AND kind = 'run.submitted'
         ORDER BY seq DESC LIMIT 1) AS submitted,
        (SELECT ts FROM events WHERE run = b.run AND kind = 'run.submitted'
         ORDER BY seq DESC LIMIT 1) AS submitted_at,
        (SELECT json_extract(body, '$.name') FROM events WHERE run = b.run
         AND kind = 'run.submitted' AND coalesce(json_extract(body, '$.name'), '') != ''
         ORDER BY seq DESC LIMIT 1) AS name,
        (SELECT json_extract(body, '$.total') FROM events WHERE run = b.run
         AND kind = 'run.submitted' AND json_type(body, '$.total') NOT IN ('null', '')
         ORDER BY seq DESC LIMIT 1) AS submitted_total,
        (SELECT sum(json_extract(body, '$.total')) FROM (
            SELECT body, row_number() OVER (
                PARTITION BY coalesce(nullif(json_extract(body, '$.shard'), ''), '0/1')
                ORDER BY seq DESC) AS k
            FROM events WHERE run = b.run AND kind = 'run.started') WHERE k = 1) AS shard_total,
        (SELECT ts FROM events WHERE run = b.run AND kind = 'run.started'
         ORDER BY seq LIMIT 1) AS started_at,
        (SELECT CASE WHEN mark IN ('start', 'resume', 'schedule') THEN NULL ELSE mark END
         FROM marks WHERE run = b.run ORDER BY seq DESC LIMIT 1) AS ended,
        (SELECT ts FROM ends WHERE run = b.run AND seq > coalesce((
            SELECT max(seq) FROM marks WHERE run = b.run
            AND mark IN ('start', 'resume', 'schedule')), 0)
         ORDER BY seq DESC LIMIT 1) AS last_end_at,
        (SELECT json_extract(body, '$.reason') FROM events WHERE run = b.run
         AND kind IN ('run.failed', 'run.cancelled')
         AND coalesce(json_extract(body, '$.reason'), '') != ''
         ORDER BY seq DESC LIMIT 1) AS reason,
        (SELECT n FROM (
            SELECT seq, CAST(substr(coalesce(nullif(json_extract(body, '$.shard'), ''), '0/1'),
                                    instr(coalesce(nullif(json_extract(body, '$.shard'), ''),
                                                   '0/1'), '/') + 1) AS INTEGER) AS n
            FROM events WHERE run = b.run AND kind = 'run.started'
            UNION ALL
            SELECT seq, json_extract(body, '$.shards') FROM events WHERE run = b.run
            AND kind = 'run.submitted' AND coalesce(json_extract(body, '$.shards'), 0) != 0
            UNION ALL
            SELECT seq, json_extract(body, '$.of') FROM scheduled WHERE run = b.run)
         ORDER BY seq DESC LIMIT 1) AS shard_count,
        (SELECT count(*) FROM shard_states WHERE run = b.run) AS shards_seen,
        (SELECT count(*) FROM shard_states WHERE run = b.run
         AND status NOT IN ('finished', 'failed')) AS shards_open,
        (SELECT count(*) FROM shard_states WHERE run = b.run AND status = 'failed')
            AS shards_failed,
        (SELECT json_group_object(shard, status) FROM (
            SELECT shard, status FROM shard_states WHERE run = b.run ORDER BY shard)) AS shards,
        (SELECT kind = 'alert.agent_lost' FROM events WHERE run = b.run AND kind IN (
            'alert.agent_lost', 'run.started', 'item.completed', 'item.failed',
            'watchdog.heartbeat') ORDER BY seq DESC LIMIT 1) AS stalled,
        (SELECT count(*) FROM events WHERE run = b.run AND kind LIKE 'alert.%') AS alerts,
        (SELECT kind FROM events WHERE run = b.run AND kind LIKE 'alert.%'
         ORDER BY seq DESC LIMIT 1) AS last_alert,
        (SELECT ts FROM events WHERE run = b.run AND kind = 'watchdog.heartbeat'
         ORDER BY seq DESC LIMIT 1) AS last_heartbeat,
        (SELECT ts FROM events WHERE run = b.run AND kind != 'watchdog.sample'
         ORDER BY seq DESC LIMIT 1) AS last_event_at,
        (SELECT count(*) FROM items WHERE run = b.run AND error IS NULL) AS done,
        (SELECT count(*) FROM items WHERE run = b.run AND error IS NOT NULL) AS failed,
        (SELECT avg(score) FROM items WHERE run = b.run AND error IS NULL) AS accuracy
    FROM base AS b
), status AS (
    SELECT *, CASE
        WHEN ended IS NOT NULL THEN ended
        WHEN coalesce(shard_count, 0) != 0 AND shards_seen >= shard_count
             AND shards_open = 0 THEN CASE WHEN shards_failed > 0 THEN 'failed' ELSE 'finished' END
        WHEN stalled THEN 'stalled'
        WHEN started_at IS NULL THEN 'submitted'
        ELSE 'running' END AS status
    FROM folded
)
SELECT run, name, json_extract(submitted, '$.model') AS model,
    json_extract(submitted, '$.dataset') AS dataset, status, done, failed,
    CASE WHEN submitted_total IS NOT NULL THEN submitted_total ELSE shard_total END AS total,
    accuracy, shards, submitted_at, started_at,
    CASE WHEN status IN ('finished', 'failed', 'cancelled') THEN last_end_at END AS finished_at,
    last_event_at, last_heartbeat, alerts, last_alert, reason,
    CASE WHEN status = 'finished' AND failed > 0 THEN 'finished_with_failures'
         WHEN status IN ('finished', 'failed', 'cancelled') THEN status END AS outcome,
    events, last_seq
FROM status ORDER BY (SELECT min(seq) FROM events WHERE run = status.run)"""


def _model_summary() -> str:
    """Accuracy and the percentiles of every metric per run, over the completed items."""
    values = "\n    UNION ALL\n    ".join(
        f"SELECT run, '{m}' AS metric, {m} AS x FROM done WHERE {m} IS NOT NULL" for m in METRICS)
    quantiles = " UNION ALL ".join(f"SELECT '{name}' AS name, {q} AS q" for name, q in QUANTILES)
    pivot = ",\n    ".join(
        f"max(CASE WHEN metric = '{m}' AND name = '{name}' THEN value END) AS {m}_{name}"
        for m in METRICS for name, _ in QUANTILES)
    columns = ", ".join(f"pivot.{m}_{name}" for m in METRICS for name, _ in QUANTILES)
    return f"""CREATE VIEW model_summary AS
WITH done AS MATERIALIZED (
    SELECT run, score, {", ".join(METRICS)} FROM items WHERE error IS NULL
), counts AS (
    SELECT run, count(*) AS items, sum(error IS NULL) AS completed,
        sum(error IS NOT NULL) AS failed
    FROM items GROUP BY run
), vals AS (
    {values}
), ranked AS (
    SELECT run, metric, x,
        row_number() OVER (PARTITION BY run, metric ORDER BY x) - 1 AS i,
        count(*) OVER (PARTITION BY run, metric) AS n
    FROM vals
), quantiles AS ({quantiles}
), pos AS (
    SELECT ranked.*, name, (n - 1) * q AS p, CAST((n - 1) * q AS INTEGER) AS lo
    FROM ranked, quantiles
), pct AS (
    SELECT run, metric, name,
        max(CASE WHEN i = lo THEN x END) + (
            max(CASE WHEN i = lo + (p > lo) THEN x END) - max(CASE WHEN i = lo THEN x END)
        ) * max(p - lo) AS value
    FROM pos GROUP BY run, metric, name
), pivot AS (
    SELECT run,
    {pivot}
    FROM pct GROUP BY run
), scores AS (
    SELECT run, count(score) AS scored, avg(score) AS accuracy FROM done GROUP BY run
)
SELECT r.run, r.name, r.model, r.status,
    coalesce(c.completed, 0) AS completed, coalesce(c.failed, 0) AS failed,
    coalesce(s.scored, 0) AS scored, s.accuracy, {columns}
FROM runs AS r LEFT JOIN counts AS c USING (run) LEFT JOIN scores AS s USING (run)
    LEFT JOIN pivot USING (run)"""


REPLACED: tuple[str, ...] = ("model_summary", "runs", "items")
"""The views of 0002 that 0003 drops (dependants first) and creates again."""

STATEMENTS: tuple[str, ...] = (_ITEMS, _RUNS, _model_summary())
"""The CREATE VIEW statements of 0003, in dependency order."""

# The item fields 0004 adds to `items` (after ``shard``): answers.csv's serving columns first.
SERVING_COLUMNS = ("request_start", "energy_j", "kv_cache_peak", "server_running",
                   "server_waiting", "itl_ms", "timing_source", "vram_source", "energy_source")
_ITEMS_TAIL = "    json_extract(body, '$.shard') AS shard,\n"
ITEMS_0004 = _ITEMS.replace(_ITEMS_TAIL, _ITEMS_TAIL + "".join(
    f"    json_extract(body, '$.{name}') AS {name},\n" for name in SERVING_COLUMNS))
"""0003's `items` with the `SERVING_COLUMNS` (which runs and model_summary do not read)."""

SERVER_SAMPLES = """CREATE VIEW server_samples AS
SELECT e.seq, s.key AS part, e.run, json_extract(e.body, '$.host') AS host,
    json_extract(s.value, '$.t') AS t,
    json_extract(s.value, '$.engine') AS engine,
    json_extract(s.value, '$.kv_cache_usage') AS kv_cache_usage,
    json_extract(s.value, '$.running') AS running,
    json_extract(s.value, '$.waiting') AS waiting,
    json_extract(s.value, '$.error') AS error
FROM events AS e, json_each(e.body, '$.server') AS s
WHERE e.kind = 'watchdog.sample' AND json_type(e.body, '$.server') = 'array'
ORDER BY e.seq, s.key"""

STATEMENTS_0004: tuple[str, ...] = ("DROP VIEW items", ITEMS_0004, SERVER_SAMPLES)

VIEWS: tuple[str, ...] = ("runs", "items", "samples", "alerts", "model_summary",
                          "server_samples", "category_summary")
"""Every view's name."""
