// Everything the run page shows about one run, as a fold over that run's events.
//
// The headline figures come from the tracker mirror; the model adds the resource series (from
// `watchdog.sample`), the answers (one row per item, the latest outcome, as answers.csv), and the
// alerts. The run page folds the live feed into it; the replay page folds the log at its own pace.

import { Tracker, apply } from "./tracker.js";
import { Series } from "./series.js";

/** The outcome class of an answer row: correct (score >= 0.5), wrong, unscored or failed. */
export function outcome(row) {
  if (!row.ok) return "failed";
  if (row.score === null || row.score === undefined) return "unscored";
  return row.score >= 0.5 ? "correct" : "wrong";
}

export class RunModel {
  constructor() {
    this.tracker = new Tracker();
    this.memory = new Series(); // MB: per GPU used and the wrapper's own, over time
    this.util = new Series(); // %: per GPU utilisation
    this.ram = new Series(); // MB: wrapper RSS and host used
    this.answers = new Map(); // item -> row
    this.alerts = [];
    this.events = 0;
    this.first_ts = null;
    this.last_ts = null;
    this.dirty = { head: true, series: true, answers: true, alerts: true };
  }

  /** The run's state (there is one run in this model), or null before its first event. */
  get state() {
    const it = this.tracker.runs.values().next();
    return it.done ? null : it.value;
  }

  apply(e) {
    apply(this.tracker, e);
    this.events += 1;
    if (this.first_ts === null || e.ts < this.first_ts) this.first_ts = e.ts;
    if (this.last_ts === null || e.ts > this.last_ts) this.last_ts = e.ts;
    this.dirty.head = true;
    if (e.kind === "watchdog.sample") this.addSamples(e.body);
    else if (e.kind === "item.completed" || e.kind === "item.failed") this.addAnswer(e);
    else if (e.kind.startsWith("alert.")) {
      this.alerts.push(e);
      this.dirty.alerts = true;
    }
  }

  addSamples(body) {
    const samples = Array.isArray(body.samples) ? body.samples : [body];
    this.firstHost ??= body.host;
    for (const s of samples) {
      const t = s.t;
      if (typeof t !== "number") continue;
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
    this.dirty.series = true;
  }

  gpuName(host, g) {
    const idx = g.index ?? g.uuid ?? "?";
    // GPUs of the first host seen are "gpuN"; other hosts' are qualified, so names never change
    return host === this.firstHost ? `gpu${idx}` : `${host}/gpu${idx}`;
  }

  addAnswer(e) {
    const b = e.body;
    const item = String(b.item);
    const ok = e.kind === "item.completed";
    const old = this.answers.get(item);
    if (old && old.ok && !ok) return; // as the tracker: a completed item stays completed
    this.answers.set(item, {
      item, ok, seq: e.seq, ts: e.ts, question: b.question ?? "", answer: b.answer ?? "",
      expected: Array.isArray(b.expected) ? b.expected.join(" | ") : (b.expected ?? ""),
      score: b.score ?? null, ttft_ms: b.ttft_ms ?? null, tpot_ms: b.tpot_ms ?? null,
      e2e_ms: b.e2e_ms ?? null, input_tokens: b.input_tokens ?? null,
      output_tokens: b.output_tokens ?? null, vram_peak_delta_mb: b.vram_peak_delta_mb ?? null,
      error: ok ? "" : `${b.reason}: ${b.message}`,
    });
    this.dirty.answers = true;
  }
}
