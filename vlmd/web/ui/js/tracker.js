// The run-state fold, a mirror of vlmd/projections/tracker.py and summary.py.
//
// `apply(tracker, event)` folds one event in place, with one handler per kind, exactly as the
// daemon does, so the page and `GET /api/runs` agree on every figure. Change both together.

export const RATE_WINDOW_S = 60.0;
export const RATE_POINTS = 256;
export const TERMINAL = ["finished", "failed", "cancelled"];
export const METRICS = ["ttft_ms", "tpot_ms", "e2e_ms", "vram_peak_delta_mb"];

/** One run as the log tells it so far (tracker.py's RunState). */
export class RunState {
  constructor(run) {
    this.run = run;
    this.name = null;
    this.model = null;
    this.dataset = null;
    this.submitted_total = null;
    this.shard_totals = new Map();
    this.shards = new Map();
    this.shard_count = null;
    this.ended = null;
    this.reason = null;
    this.submitted_at = null;
    this.started_at = null;
    this.finished_at = null;
    this.last_event_at = null;
    this.last_heartbeat = null;
    this.stalled = false;
    this.alerts = 0;
    this.last_alert = null;
    this.items = new Map(); // item id -> {ok, score, ttft_ms, tpot_ms, e2e_ms, vram_peak_delta_mb}
    this.done = 0;
    this.failed = 0;
    this.recent = []; // ts of the last RATE_POINTS item events
    this.last_seq = 0;
    this.scoreSum = 0; // running sums so accuracy costs O(1) per event
    this.scored = 0;
  }

  get total() {
    if (this.submitted_total !== null) return this.submitted_total;
    if (this.shard_totals.size === 0) return null;
    let sum = 0;
    for (const v of this.shard_totals.values()) sum += v;
    return sum;
  }

  get status() {
    if (this.ended !== null) return this.ended;
    if (this.shard_count && this.shards.size >= this.shard_count) {
      const states = [...this.shards.values()];
      if (states.every((s) => s === "finished" || s === "failed")) {
        return states.includes("failed") ? "failed" : "finished";
      }
    }
    if (this.stalled) return "stalled";
    return this.started_at === null ? "submitted" : "running";
  }

  get rate() {
    const times = this.recent;
    if (times.length < 2) return null;
    const last = times[times.length - 1];
    let first = null;
    let n = 0;
    for (const t of times) {
      if (first === null && t >= last - RATE_WINDOW_S) first = t;
      if (first !== null && t >= first) n += 1;
    }
    n -= 1;
    return last > first && n > 0 ? n / (last - first) : null;
  }

  get eta_s() {
    const total = this.total;
    const rate = this.rate;
    if (total === null || !rate || TERMINAL.includes(this.status)) return null;
    return Math.max(total - this.done - this.failed, 0) / rate;
  }

  get accuracy() {
    return this.scored ? this.scoreSum / this.scored : null;
  }

  /** The run as `GET /api/runs` shows it, accuracy included. */
  toDict() {
    return {
      run: this.run, name: this.name, model: this.model, dataset: this.dataset,
      status: this.status, done: this.done, failed: this.failed, total: this.total,
      rate: this.rate, eta_s: this.eta_s, submitted_at: this.submitted_at,
      started_at: this.started_at, finished_at: this.finished_at,
      last_event_at: this.last_event_at, last_heartbeat: this.last_heartbeat,
      alerts: this.alerts, last_alert: this.last_alert, reason: this.reason,
      shards: Object.fromEntries([...this.shards.entries()].sort()),
      last_seq: this.last_seq, accuracy: this.accuracy,
    };
  }
}

/** Every run by id, a name -> id index, and the seq of the last event folded in. */
export class Tracker {
  constructor() {
    this.runs = new Map();
    this.names = new Map();
    this.last_seq = 0;
  }

  find(runOrName) {
    return this.runs.get(runOrName) ?? this.runs.get(this.names.get(runOrName)) ?? null;
  }
}

function submitted(s, e, t) {
  const b = e.body;
  s.model = b.model;
  s.dataset = b.dataset;
  if (b.total !== undefined) s.submitted_total = b.total;
  s.submitted_at = e.ts;
  if (b.shards) s.shard_count = b.shards;
  if (b.name) {
    s.name = b.name;
    t.names.set(b.name, s.run);
  }
}

const shardOf = (body) => String(body.shard || "0/1");

function started(s, e) {
  const shard = shardOf(e.body);
  s.shard_totals.set(shard, e.body.total);
  s.shards.set(shard, "running");
  s.shard_count = Number(shard.split("/")[1]);
  s.ended = s.finished_at = null;
  if (s.started_at === null) s.started_at = e.ts;
  s.stalled = false;
}

const num = (v) => (typeof v === "number" ? v : null);

function item(s, e) {
  const b = e.body;
  const ok = e.kind === "item.completed";
  const id = String(b.item);
  const old = s.items.get(id);
  s.recent.push(e.ts);
  if (s.recent.length > RATE_POINTS) s.recent.shift();
  s.stalled = false;
  if (old && old.ok && !ok) return; // a completed item stays completed
  const result = {
    ok, score: num(b.score), ttft_ms: num(b.ttft_ms), tpot_ms: num(b.tpot_ms),
    e2e_ms: num(b.e2e_ms), vram_peak_delta_mb: num(b.vram_peak_delta_mb),
  };
  if (old) {
    if (old.ok) s.done -= 1; else s.failed -= 1;
    if (old.ok && old.score !== null) { s.scoreSum -= old.score; s.scored -= 1; }
  }
  s.items.set(id, result);
  if (ok) s.done += 1; else s.failed += 1;
  if (ok && result.score !== null) { s.scoreSum += result.score; s.scored += 1; }
}

function heartbeat(s, e) {
  s.last_heartbeat = e.ts;
  s.stalled = false;
}

function alert(s, e) {
  s.alerts += 1;
  s.last_alert = e.kind;
  if (e.kind === "alert.agent_lost") s.stalled = true;
}

function ended(s, e) {
  const status = e.kind.slice("run.".length);
  if (e.body.shard && status !== "cancelled") {
    s.shards.set(String(e.body.shard), status);
    if (TERMINAL.includes(s.status)) s.finished_at = e.ts;
  } else {
    s.ended = status;
    s.finished_at = e.ts;
  }
  if (status !== "finished") s.reason = e.body.reason || s.reason;
}

function ignore() {}

export const HANDLERS = {
  "run.submitted": submitted, "run.started": started, "item.completed": item,
  "item.failed": item, "watchdog.heartbeat": heartbeat, "watchdog.sample": ignore,
  "run.finished": ended, "run.failed": ended, "run.cancelled": ended,
};

/** Fold one event into `tracker`; returns the run's state. */
export function apply(tracker, event) {
  let state = tracker.runs.get(event.run);
  if (!state) {
    state = new RunState(event.run);
    tracker.runs.set(event.run, state);
  }
  const handler = HANDLERS[event.kind] ?? (event.kind.startsWith("alert.") ? alert : ignore);
  handler(state, event, tracker);
  if (event.kind !== "watchdog.sample") state.last_event_at = event.ts;
  state.last_seq = event.seq;
  tracker.last_seq = event.seq;
  return state;
}

/** The `q` quantile (0..1) of sorted values by linear interpolation (numpy's default). */
export function percentile(sorted, q) {
  const pos = (sorted.length - 1) * q;
  const lo = Math.floor(pos);
  const hi = Math.ceil(pos);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo);
}

/** count, mean, p50, p90, p99 and max of `values`, as summary.py's describe(). */
export function describe(values) {
  const v = Float64Array.from(values).sort();
  if (!v.length) return { count: 0, mean: null, p50: null, p90: null, p99: null, max: null };
  let sum = 0;
  for (const x of v) sum += x;
  return {
    count: v.length, mean: sum / v.length, p50: percentile(v, 0.5), p90: percentile(v, 0.9),
    p99: percentile(v, 0.99), max: v[v.length - 1],
  };
}

/** The values of one metric over the run's completed items. */
export function metricValues(state, metric) {
  const out = [];
  for (const r of state.items.values()) if (r.ok && r[metric] !== null) out.push(r[metric]);
  return out;
}
