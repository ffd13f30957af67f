// Everything the run page shows about one run.
//
// The run's row, its item rows and its summary are the daemon's fold, upserted from state
// messages ({seq, runs, items, summary}); nothing here decides a status, a count or an item's
// outcome. The page draws the run's samples (charts) and alerts (the list) from raw events:
// that is rendering. The replay page fills the same model from the replay's messages.

import { Series } from "./series.js";

/** The raw events the page draws itself: samples for the charts, alerts for the list. */
export const DRAWN_KINDS = ["watchdog.sample", "alert.*"];

export class RunModel {
  constructor() {
    this.row = null; // the run's row (GET /api/runs's shape)
    this.items = new Map(); // item -> item row (answers.csv columns, seq, outcome)
    this.summary = null; // the run's summary (percentiles, items/s, failures)
    this.seq = 0; // the log position the state is at
    this.memory = new Series(); // MB: per GPU used and the wrapper's own, over time
    this.util = new Series(); // %: per GPU utilisation
    this.ram = new Series(); // MB: wrapper RSS and host used
    this.server = new Series(); // the serving engine's /metrics: KV cache %, requests
    this.alerts = [];
    this.gpuSamples = 0; // samples that named a GPU, and those that named none: a host
    this.bareSamples = 0; // without GPUs gets a sentence instead of empty charts
    this.dirty = { head: true, series: true, answers: true, alerts: true, summary: true };
  }

  /** Upsert a state message's run row, item rows and summary. */
  applyState(message) {
    for (const row of message.runs) this.row = row;
    for (const item of message.items ?? []) this.items.set(item.item, item);
    if (message.summary) {
      this.summary = message.summary;
      this.dirty.summary = true;
    }
    this.seq = message.seq;
    this.dirty.head = true;
    if (message.items?.length || message.summary) this.dirty.answers = true;
  }

  /** Draw samples and alerts (in seq order). */
  applyEvents(events) {
    for (const e of events) {
      if (e.kind === "watchdog.sample") this.addSamples(e.body);
      else if (e.kind.startsWith("alert.")) {
        this.alerts.push(e);
        this.dirty.alerts = true;
      }
    }
  }

  addSamples(body) {
    const samples = Array.isArray(body.samples) ? body.samples : [body];
    this.firstHost ??= body.host;
    for (const s of samples) {
      const t = s.t;
      if (typeof t !== "number") continue;
      if ((s.gpus ?? []).length) this.gpuSamples++;
      else this.bareSamples++;
      const mem = {};
      const util = {};
      for (const g of s.gpus ?? []) {
        const name = this.gpuName(body.host, g);
        if (typeof g.mem_used_mb === "number") mem[`${name} used`] = g.mem_used_mb;
        if (typeof g.proc_mem_mb === "number") mem[`${name} wrapper`] = g.proc_mem_mb;
        if (typeof g.util_gpu === "number") util[name] = g.util_gpu;
      }
      const r = s.ram ?? {};
      const ram = {};
      if (typeof r.rss_mb === "number") ram["wrapper rss"] = r.rss_mb;
      if (typeof r.host_used_mb === "number") ram["host used"] = r.host_used_mb;
      if (typeof r.cgroup_usage_mb === "number") ram["cgroup usage"] = r.cgroup_usage_mb;
      this.memory.push(t, mem);
      this.util.push(t, util);
      this.ram.push(t, ram);
    }
    for (const s of Array.isArray(body.server) ? body.server : []) {
      if (typeof s.t !== "number" || s.error) continue;
      const values = {};
      if (typeof s.kv_cache_usage === "number") values["KV cache %"] = 100 * s.kv_cache_usage;
      if (typeof s.running === "number") values.running = s.running;
      if (typeof s.waiting === "number") values.waiting = s.waiting;
      this.server.push(s.t, values);
    }
    this.dirty.series = true;
  }

  gpuName(host, g) {
    const idx = g.index ?? g.uuid ?? "?";
    // GPUs of the first host seen are "gpuN"; other hosts' are qualified, so names never change
    return host === this.firstHost ? `gpu${idx}` : `${host}/gpu${idx}`;
  }
}
