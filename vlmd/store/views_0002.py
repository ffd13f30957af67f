"""The SQL views as migration ``0002_views`` shipped them: frozen, never edit (a log that applied
0002 has exactly these). ``0003_views`` replaced `runs`, `items` and `model_summary` with those
of `vlmd.store.views`; `samples` and `alerts` are still these.
"""

from __future__ import annotations

# As they were when 0002 shipped (the statements below are generated from them).
METRICS = ("ttft_ms", "tpot_ms", "e2e_ms", "vram_peak_delta_mb")
QUANTILES = (("p50", 0.50), ("p90", 0.90), ("p99", 0.99))

_ITEMS = """CREATE VIEW items AS
WITH item_events AS (
    SELECT seq, run, kind, ts, body, CAST(json_extract(body, '$.item') AS TEXT) AS item
    FROM events WHERE kind IN ('item.completed', 'item.failed')
), ranked AS (
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
    CASE WHEN kind = 'item.failed' THEN json_extract(body, '$.reason') END AS reason,
    json_extract(body, '$.shard') AS shard,
    ts, seq, first_seq, attempts
FROM ranked WHERE pick = 1 ORDER BY first_seq"""

# One event per sample: inline bodies ({host, t, gpus, ram}) and batches ({host, samples: [...]}).
_SAMPLES = """CREATE VIEW samples AS
WITH one AS (
    SELECT seq, run, json_extract(body, '$.host') AS host, body AS sample, 0 AS part
    FROM events WHERE kind = 'watchdog.sample' AND json_type(body, '$.samples') IS NULL
    UNION ALL
    SELECT e.seq, e.run, json_extract(e.body, '$.host'), s.value, s.key
    FROM events AS e, json_each(e.body, '$.samples') AS s WHERE e.kind = 'watchdog.sample'
)
SELECT one.seq, one.part, one.run, one.host,
    json_extract(one.sample, '$.t') AS t,
    json_extract(g.value, '$.index') AS gpu,
    json_extract(g.value, '$.name') AS gpu_name,
    coalesce(json_extract(g.value, '$.lost'), 0) AS gpu_lost,
    json_extract(g.value, '$.mem_used_mb') AS mem_used_mb,
    json_extract(g.value, '$.mem_total_mb') AS mem_total_mb,
    json_extract(g.value, '$.proc_mem_mb') AS proc_mem_mb,
    json_extract(g.value, '$.util_gpu') AS util_gpu,
    json_extract(g.value, '$.util_mem') AS util_mem,
    json_extract(g.value, '$.power_w') AS power_w,
    json_extract(g.value, '$.temp_c') AS temp_c,
    json_extract(one.sample, '$.ram.rss_mb') AS rss_mb,
    json_extract(one.sample, '$.ram.host_used_mb') AS host_used_mb,
    json_extract(one.sample, '$.ram.host_total_mb') AS host_total_mb,
    json_extract(one.sample, '$.ram.cgroup_usage_mb') AS cgroup_usage_mb,
    json_extract(one.sample, '$.ram.cgroup_limit_mb') AS cgroup_limit_mb,
    json_extract(one.sample, '$.ram.oom_kills') AS oom_kills
FROM one LEFT JOIN json_each(one.sample, '$.gpus') AS g
ORDER BY one.seq, one.part, g.key"""

_ALERTS = """CREATE VIEW alerts AS
SELECT seq, run, kind, substr(kind, 7) AS name, ts, received,
    json_extract(body, '$.host') AS host,
    json_extract(body, '$.message') AS message,
    json_extract(body, '$.signal') AS signal,
    json_extract(body, '$.exit_code') AS exit_code,
    json_extract(body, '$.shard') AS shard
FROM events WHERE kind LIKE 'alert.%' ORDER BY seq"""

# The tracker's fold, said in SQL: each field is "the latest event that sets it", by seq.
_RUNS = """CREATE VIEW runs AS
WITH base AS (
    SELECT run, max(seq) AS last_seq, count(*) AS events,
        max(CASE WHEN kind = 'run.started' THEN seq END) AS last_start
    FROM events GROUP BY run
), ends AS (
    SELECT run, seq, ts, substr(kind, 5) AS status,
        coalesce(json_extract(body, '$.shard'), '') AS shard
    FROM events WHERE kind IN ('run.finished', 'run.failed', 'run.cancelled')
), shard_events AS (
    SELECT run, seq, coalesce(nullif(json_extract(body, '$.shard'), ''), '0/1') AS shard,
        'running' AS status
    FROM events WHERE kind = 'run.started'
    UNION ALL
    SELECT run, seq, shard, status FROM ends WHERE shard != '' AND status != 'cancelled'
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
         AND kind = 'run.submitted' AND json_type(body, '$.total') IS NOT NULL
         ORDER BY seq DESC LIMIT 1) AS submitted_total,
        (SELECT sum(json_extract(body, '$.total')) FROM (
            SELECT body, row_number() OVER (
                PARTITION BY coalesce(nullif(json_extract(body, '$.shard'), ''), '0/1')
                ORDER BY seq DESC) AS k
            FROM events WHERE run = b.run AND kind = 'run.started') WHERE k = 1) AS shard_total,
        (SELECT ts FROM events WHERE run = b.run AND kind = 'run.started'
         ORDER BY seq LIMIT 1) AS started_at,
        (SELECT status FROM ends WHERE run = b.run AND seq > coalesce(b.last_start, 0)
         AND (shard = '' OR status = 'cancelled') ORDER BY seq DESC LIMIT 1) AS ended,
        (SELECT ts FROM ends WHERE run = b.run AND seq > coalesce(b.last_start, 0)
         ORDER BY seq DESC LIMIT 1) AS last_end_at,
        (SELECT json_extract(body, '$.reason') FROM events WHERE run = b.run
         AND kind IN ('run.failed', 'run.cancelled')
         AND coalesce(json_extract(body, '$.reason'), '') != ''
         ORDER BY seq DESC LIMIT 1) AS reason,
        (SELECT CASE WHEN kind = 'run.started'
                     THEN CAST(substr(coalesce(nullif(json_extract(body, '$.shard'), ''), '0/1'),
                                      instr(coalesce(nullif(json_extract(body, '$.shard'), ''),
                                                     '0/1'), '/') + 1) AS INTEGER)
                     ELSE json_extract(body, '$.shards') END
         FROM events WHERE run = b.run AND (kind = 'run.started'
            OR (kind = 'run.submitted' AND coalesce(json_extract(body, '$.shards'), 0) != 0))
         ORDER BY seq DESC LIMIT 1) AS shard_count_raw,
        (SELECT count(*) FROM shard_states WHERE run = b.run) AS shards_seen,
        (SELECT count(*) FROM shard_states WHERE run = b.run
         AND status NOT IN ('finished', 'failed')) AS shards_open,
        (SELECT count(*) FROM shard_states WHERE run = b.run AND status = 'failed')
            AS shards_failed,
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
        (SELECT count(DISTINCT CAST(json_extract(body, '$.item') AS TEXT)) FROM events
         WHERE run = b.run AND kind = 'item.completed') AS done,
        (SELECT count(*) FROM (SELECT 1 FROM events WHERE run = b.run
            AND kind IN ('item.completed', 'item.failed')
            GROUP BY CAST(json_extract(body, '$.item') AS TEXT)
            HAVING max(kind = 'item.completed') = 0)) AS failed
    FROM base AS b
), status AS (
    SELECT *, CASE
        WHEN ended IS NOT NULL THEN ended
        WHEN coalesce(shard_count_raw, 0) != 0 AND shards_seen >= shard_count_raw
             AND shards_open = 0 THEN CASE WHEN shards_failed > 0 THEN 'failed' ELSE 'finished' END
        WHEN started_at IS NULL THEN 'submitted'
        WHEN stalled THEN 'stalled'
        ELSE 'running' END AS status
    FROM folded
)
SELECT run, name, json_extract(submitted, '$.model') AS model,
    json_extract(submitted, '$.dataset') AS dataset, status, done, failed,
    CASE WHEN submitted_total IS NOT NULL THEN submitted_total ELSE shard_total END AS total,
    submitted_at, started_at,
    CASE WHEN status IN ('finished', 'failed', 'cancelled') THEN last_end_at END AS finished_at,
    last_event_at, last_heartbeat, alerts, last_alert, reason, events, last_seq
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


STATEMENTS: tuple[str, ...] = (_ITEMS, _SAMPLES, _ALERTS, _RUNS, _model_summary())
"""The CREATE VIEW statements of 0002, in dependency order."""
