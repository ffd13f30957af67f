"""Datasette metadata for the log: titles, descriptions and units of every column, canned queries.

Columns that carry an event field take its meaning and unit from the event catalog
(`vlmd_agent.catalog`); the rest (positions, counts of the views) are described here. Units are
pint names (Datasette renders and filters with them); MiB is 1024 * 1024 bytes, as the agent
measures it.
"""

from __future__ import annotations

from typing import Any

from vlmd_agent import catalog

DATABASE = "vlmd"
Column = tuple[str, str | None, str]  # name, unit, description


def _declared(fields: list[catalog.FieldInfo], names: tuple[str, ...] | None = None
              ) -> tuple[Column, ...]:
    """Columns named like catalog fields take the field's unit and meaning from the catalog."""
    return tuple((f.name, f.unit, f.meaning) for f in fields if names is None or f.name in names)


_ITEM_COLUMNS = _declared(catalog.answer_columns())
_SERVING_ITEM_COLUMNS = _declared(catalog.fields(catalog.ItemCompleted), (
    "itl_ms", "timing_source", "vram_source", "energy_source"))
_BENCHMARK_ITEM_COLUMNS = _declared(catalog.fields(catalog.ItemCompleted), ("hint", "judged"))
_CIRCULAR = ("CircularEval: the share of questions (circular groups) with every rotation "
             "answered right (score >= 0.5; a failed rotation is not right), 0 to 1")
_SCRAPE = {f.name: f for f in catalog.fields(catalog.ServerScrape)}
_GPU = {f.name: f for f in catalog.fields(catalog.Gpu)}
_SAMPLE_GPU_COLUMNS: tuple[Column, ...] = (
    ("gpu", None, _GPU["index"].meaning),
    ("gpu_name", None, _GPU["name"].meaning),
    ("gpu_lost", None, "1 when the GPU did not answer (lost, reset needed)"),
    *_declared(list(_GPU.values()), ("mem_used_mb", "mem_total_mb", "proc_mem_mb", "util_gpu",
                                     "util_mem", "power_w", "temp_c")),
)
_SAMPLE_RAM_COLUMNS = _declared(catalog.fields(catalog.Ram), (
    "rss_mb", "host_used_mb", "host_total_mb", "cgroup_usage_mb", "cgroup_limit_mb", "oom_kills"))
_ALERT = {f.name: f for f in catalog.fields(catalog.Alert)}

TABLES: dict[str, tuple[str, str, tuple[Column, ...]]] = {
    "events": ("Event log", "Every event vlmd accepted, append-only, in seq order: the only "
               "source of truth; every other table here is a view over it.", (
        ("seq", None, "Position in the log (1, 2, ...): the total order of events"),
        ("key", None, "The producer's idempotency key; a re-sent event is stored once"),
        ("run", None, "Run id"),
        ("kind", None, "Event kind: " + ", ".join(catalog.KINDS) + ", alert.<name>"),
        ("ts", None, "Producer's wall clock, Unix seconds"),
        ("received", None, "vlmd's wall clock when it committed the event, Unix seconds"),
        ("body", None, "The event body, JSON; its fields depend on the kind"),
    )),
    "runs": ("Runs", "One row per run, folded from its events as the live tracker folds them.", (
        ("run", None, "Run id"),
        ("name", None, "Human name given at submission"),
        ("model", None, "Model SPEC (openai:NAME@URL, hf:PATH, demo:NAME)"),
        ("dataset", None, "Dataset path or name"),
        ("status", None, "submitted, running, stalled, finished, failed or cancelled"),
        ("done", None, "Items completed"),
        ("failed", None, "Items whose latest outcome is a failure"),
        ("total", None, "Items in the run: as submitted, else the started shards' shares"),
        ("accuracy", None, "Mean score of the completed items that have one, 0 to 1"),
        ("shards", None, "Each shard's state (running, scheduled, finished, failed), JSON"),
        ("submitted_at", None, "When the run was submitted, Unix seconds"),
        ("started_at", None, "When the first agent started, Unix seconds"),
        ("finished_at", None, "When the run ended, Unix seconds"),
        ("last_event_at", None, "Time of its latest event other than samples, Unix seconds"),
        ("last_heartbeat", None, "Time of its latest agent heartbeat, Unix seconds"),
        ("alerts", None, "How many alert.* events it has"),
        ("last_alert", None, "Kind of its latest alert"),
        ("reason", None, "Why it failed or was cancelled"),
        ("outcome", None, "How it ended: finished, finished_with_failures, failed or "
                          "cancelled; empty while it is not over"),
        ("events", None, "Events in the log for this run"),
        ("last_seq", None, "Seq of its latest event"),
    )),
    "items": ("Items", "One row per item of a run, the answers.csv columns: the latest "
              "completion wins; a failure replaces only an earlier failure.", (
        *_ITEM_COLUMNS,
        ("outcome", None, "correct (score >= 0.5), wrong, unscored or failed"),
        ("reason", None, "Failure reason: oom, timeout, backend_error or bad_input"),
        ("shard", None, "The agent's shard (i/n) that produced the row"),
        *_SERVING_ITEM_COLUMNS,
        *_BENCHMARK_ITEM_COLUMNS,
        ("ts", None, "Producer time of the row's event, Unix seconds"),
        ("seq", None, "Seq of the event the row comes from"),
        ("first_seq", None, "Seq of the item's first event (rows are in this order)"),
        ("attempts", None, "Item events for this item (retries included)"),
    )),
    "samples": ("GPU and RAM samples", "One row per GPU per watchdog sample (one row with no "
                "GPU for samples without GPUs).", (
        ("seq", None, "Seq of the watchdog.sample event"),
        ("part", None, "Index of the sample within a batched event"),
        ("run", None, "Run id"),
        ("host", None, "Agent host"),
        ("t", None, "Sample time (agent clock), Unix seconds"),
        *_SAMPLE_GPU_COLUMNS,
        *_SAMPLE_RAM_COLUMNS,
    )),
    "server_samples": ("Serving engine samples", "One row per read of the serving engine's "
                       "Prometheus /metrics (vLLM, SGLang) by a watchdog: its KV cache and "
                       "queue over time.", (
        ("seq", None, "Seq of the watchdog.sample event"),
        ("part", None, "Index of the read within the event"),
        ("run", None, "Run id"),
        ("host", None, "Agent host"),
        ("t", "s", _SCRAPE["t"].meaning),
        *_declared(list(_SCRAPE.values()), ("engine", "kv_cache_usage", "running", "waiting",
                                            "error")),
    )),
    "alerts": ("Alerts", "Every alert.* event: hangs, wrapper deaths, OOM kills, lost agents.", (
        ("seq", None, "Seq of the alert event"),
        ("run", None, "Run id"),
        ("kind", None, "Event kind, alert.<name>"),
        ("name", None, "The alert's name (hang, wrapper_died, oom, agent_lost, ...)"),
        ("ts", None, "Producer time, Unix seconds"),
        ("received", None, "When vlmd committed it, Unix seconds"),
        ("host", None, "Agent host, when the alert names it"),
        *_declared(list(_ALERT.values()), ("message", "signal", "exit_code", "shard")),
    )),
    "model_summary": ("Model summary", "Accuracy and p50/p90/p99 of latency and VRAM per run, "
                      "over completed items; percentiles interpolate linearly (numpy's "
                      "default), as the API's summary does.", (
        ("run", None, "Run id"),
        ("name", None, "Human name of the run"),
        ("model", None, "Model SPEC"),
        ("status", None, "Run status"),
        ("completed", None, "Items completed"),
        ("failed", None, "Items failed"),
        ("scored", None, "Completed items with a score"),
        ("accuracy", None, "Mean score of the scored items, 0 to 1"),
        ("circular_accuracy", None, _CIRCULAR + "; empty for a file that is not circular"),
        ("circular_groups", None, "Questions (circular groups) with a rotation answered or "
                                  "failed; 0 for a file that is not circular"),
        ("unparsed", None, "Multiple-choice answers no rule (nor judge) could read: they "
                           "score 0"),
        *((f"{m}_{q}", unit, f"{q} of {m} over completed items")
          for m, unit in (("ttft_ms", "ms"), ("tpot_ms", "ms"), ("e2e_ms", "ms"),
                          ("vram_peak_delta_mb", "MiB"))
          for q in ("p50", "p90", "p99")),
    )),
    "category_summary": ("Accuracy by category", "Per run and category (MMBench's table): "
                         "the scored items and their accuracy, and for a circular file "
                         "CircularEval's; as the run summary's by_category and by_l2_category.", (
        ("run", None, "Run id"),
        ("level", None, "category (the item's category) or l2_category (the coarser one above "
                        "it)"),
        ("category", None, "The category's name"),
        ("items", None, "Its completed items with a score"),
        ("accuracy", None, "Their mean score, 0 to 1; empty when none completed"),
        ("circular_groups", None, "Its questions (circular groups), for a circular file"),
        ("circular_accuracy", None, _CIRCULAR + ", over its questions"),
    )),
}

QUERIES: dict[str, tuple[str, str, str]] = {
    "slowest_items": ("Slowest items", "Completed items by end-to-end latency, slowest first "
                      "(run: a run id, or empty for all).", """
SELECT run, item, e2e_ms, ttft_ms, tpot_ms, output_tokens, vram_peak_delta_mb, answer
FROM items WHERE error IS NULL AND e2e_ms IS NOT NULL AND (:run = '' OR run = :run)
ORDER BY e2e_ms DESC LIMIT 100"""),
    "failed_by_reason": ("Failed items by reason", "Items whose latest outcome is a failure, "
                         "counted per run and reason.", """
SELECT run, reason, count(*) AS items, group_concat(item, ', ') AS which_items
FROM items WHERE error IS NOT NULL GROUP BY run, reason ORDER BY items DESC, run, reason"""),
    "vram_peaks": ("VRAM peaks per run", "The highest GPU memory seen per run, host and GPU, "
                   "with the largest per-request peak delta of the run.", """
SELECT s.run, s.host, s.gpu, max(s.mem_used_mb) AS peak_mem_used_mb,
    max(s.mem_total_mb) AS mem_total_mb, count(*) AS samples,
    (SELECT max(vram_peak_delta_mb) FROM items WHERE items.run = s.run)
        AS max_item_peak_delta_mb
FROM samples AS s WHERE s.gpu IS NOT NULL GROUP BY s.run, s.host, s.gpu
ORDER BY peak_mem_used_mb DESC"""),
    "samples_around_alerts": ("Samples around each alert", "For every alert, the samples of its "
                              "run within window_s seconds (default 10) of it.", """
SELECT a.seq AS alert_seq, a.kind, a.run, a.ts AS alert_ts, s.t, s.t - a.ts AS offset_s,
    s.host, s.gpu, s.mem_used_mb, s.util_gpu, s.rss_mb, s.cgroup_usage_mb
FROM alerts AS a JOIN samples AS s ON s.run = a.run
    AND s.t BETWEEN a.ts - coalesce(nullif(:window_s, ''), 10)
                AND a.ts + coalesce(nullif(:window_s, ''), 10)
ORDER BY a.seq, s.t, s.gpu LIMIT 1000"""),
}


def metadata() -> dict[str, Any]:
    """Datasette's metadata.json for a vlmd log served under the database name `DATABASE`."""
    tables = {name: {"title": title, "description": description,
                     "columns": {c: text for c, _, text in columns},
                     "units": {c: unit for c, unit, _ in columns if unit}}
              for name, (title, description, columns) in TABLES.items()}
    queries = {name: {"title": title, "description": description, "sql": sql.strip()}
               for name, (title, description, sql) in QUERIES.items()}
    return {"title": "vlmd event log",
            "description": "Read-only view of vlmd's append-only event log and its views.",
            "databases": {DATABASE: {"tables": tables, "queries": queries}}}
