// The run page's widgets over a RunModel: headline, accuracy by category, resource charts,
// histograms, answers table (answerstable.js) and alerts timeline. The run page and the replay page both use it; redraws are coalesced to
// animation frames, and the O(items) parts (histograms, table) to at most SLOW_EVERY_MS. Every
// figure is the daemon's (the run's row, its item rows, its summary's percentiles); the
// histograms' bars are drawn from the item rows' values.

import { AnswersTable } from "./answerstable.js";
import { CategoryChart } from "./categories.js";
import { TimeChart, drawHistogram } from "./charts.js";
import { progressBar, updateRunFields } from "./runrow.js";
import { RUN_LAYOUT } from "./runlayout.js";
import { fmt, fmtTime, frameScheduler, h, setText } from "./util.js";

const SLOW_EVERY_MS = 250;
const SLOW_SHARE = 0.2; // the slow parts may take at most this share of the main thread
/** Put the run widgets' markup into `container` (before constructing a RunView). */
export function mountRunLayout(container) {
  container.innerHTML = RUN_LAYOUT;
  container.querySelector("#run-head .progress-wrap").append(progressBar());
}

const EMPTY_ROW = { done: 0, failed: 0, total: null, status: "—", rate: null, eta_s: null,
  accuracy: null, alerts: 0, model: null, dataset: null, shards: {}, reason: null };

export class RunView {
  constructor(runParam) {
    this.runParam = runParam;
    this.model = null;
    this.slowAt = 0;
    this.slowCost = 0;
    this.slowTimer = null;
    this.answers = new AnswersTable(() => this.model?.row?.run ?? this.runParam);
    this.categories = new CategoryChart(document.getElementById("categories"));
    const markers = () => (this.model ? this.model.alerts.map((a) => a.ts) : []);
    this.charts = {
      memory: new TimeChart(document.getElementById("chart-memory"), { unit: "MB", markers }),
      util: new TimeChart(document.getElementById("chart-util"), { unit: "%", markers }),
      ram: new TimeChart(document.getElementById("chart-ram"), { unit: "MB", markers }),
      server: new TimeChart(document.getElementById("chart-server"), { unit: "% · requests", markers }),
    };
    this.schedule = frameScheduler(() => this.render());
  }

  /** Show `model` (a fresh one after a replay seek redraws everything). */
  setModel(model) {
    this.model = model;
    this.answers.setRows(model.items);
    for (const k of Object.keys(model.dirty)) model.dirty[k] = true;
    for (const c of Object.values(this.charts)) c.drawnVersion = -1;
    this.slowAt = 0;
    this.schedule();
  }

  render() {
    const m = this.model;
    if (!m) return;
    if (m.dirty.head) this.renderHead();
    if (m.dirty.summary) this.renderSummary();
    if (m.dirty.series) {
      this.charts.memory.update(m.memory);
      this.charts.util.update(m.util);
      this.charts.ram.update(m.ram);
      const noGpu = m.gpuSamples === 0 && m.bareSamples > 0;
      document.getElementById("no-gpu").hidden = !noGpu;
      for (const f of document.querySelectorAll(".charts .gpu-chart")) f.hidden = noGpu;
      if (m.server.count) {
        document.getElementById("server-figure").hidden = false;
        this.charts.server.update(m.server);
      }
      m.dirty.series = false;
    }
    if (m.dirty.alerts) this.renderAlerts();
    if (m.dirty.answers) {
      const every = Math.max(SLOW_EVERY_MS, this.slowCost / SLOW_SHARE);
      const wait = this.slowAt + every - performance.now();
      if (wait <= 0) {
        this.slowAt = performance.now();
        this.renderHistograms();
        this.answers.render();
        this.slowCost = performance.now() - this.slowAt;
        m.dirty.answers = false;
      } else if (!this.slowTimer) {
        this.slowTimer = setTimeout(() => { this.slowTimer = null; this.schedule(); }, wait);
      }
    }
  }

  renderHead() {
    const m = this.model;
    m.dirty.head = false;
    const row = m.row;
    const card = document.getElementById("run-head");
    setText(document.getElementById("event-count"), `at seq ${m.seq}`);
    if (!row) {
      updateRunFields(card, EMPTY_ROW);
      return;
    }
    card.dataset.run = row.run;
    setText(document.getElementById("run-title"), row.name ? `${row.name} (${row.run})` : row.run);
    updateRunFields(card, row);
  }

  /** The summary's accuracy by category, and its words: the commonest item errors with counts,
   * the unparsed answers, how tokens were counted and why VRAM figures are missing or ~0 (the
   * daemon's summary decides them all). */
  renderSummary() {
    const m = this.model;
    m.dirty.summary = false;
    const s = m.summary ?? {};
    const failures = s.failures ?? [];
    document.getElementById("failures").hidden = failures.length === 0;
    document.querySelector("#failures .failures-list").replaceChildren(...failures.map((f) =>
      h("li", { dataset: { count: f.count } }, h("span", { class: "count" }, String(f.count)), " ",
        h("span", { class: "why" }, f.reason))));
    this.categories.update(s);
    const notes = [];
    if (s.unparsed) {
      notes.push(`unparsed: ${s.unparsed} answer${s.unparsed > 1 ? "s" : ""} named no option `
        + "(scored 0, never guessed)");
    }
    const sources = Object.entries(s.tokens_source ?? {});
    if (sources.length) {
      notes.push(`tokens counted by: ${sources.map(([k, n]) => `${k} (${n} items)`).join(", ")}`);
    }
    if (s.vram_note) notes.push(`VRAM: ${s.vram_note}`);
    document.getElementById("notes").replaceChildren(...notes.map((n) => h("li", {}, n)));
  }

  renderHistograms() {
    const m = this.model;
    const values = (metric) => {
      const out = [];
      for (const r of m.items.values()) {
        if (r.outcome !== "failed" && typeof r[metric] === "number") out.push(r[metric]);
      }
      return out;
    };
    const stats = (metric) => m.summary?.[metric] ?? null;
    for (const [id, metric, unit] of [["hist-ttft", "ttft_ms", "ms"], ["hist-tpot", "tpot_ms", "ms"],
      ["hist-vram", "vram_peak_delta_mb", "MB"]]) {
      drawHistogram(document.getElementById(id), values(metric), { unit, stats: stats(metric) });
    }
  }

  renderAlerts() {
    const m = this.model;
    m.dirty.alerts = false;
    const list = document.getElementById("alerts");
    list.dataset.count = String(m.alerts.length);
    if (list.children.length > m.alerts.length) list.replaceChildren();
    for (const a of m.alerts.slice(list.children.length)) list.append(alertItem(a));
    document.getElementById("no-alerts").hidden = m.alerts.length > 0;
  }
}

function alertItem(e) {
  const b = e.body;
  const extra = [b.signal != null ? `signal ${b.signal}` : null,
    b.exit_code != null ? `exit code ${b.exit_code}` : null].filter(Boolean).join(", ");
  const li = h("li", { class: "alert", dataset: { kind: e.kind, seq: e.seq } },
    h("span", { class: "when" }, fmtTime(e.ts)), " ",
    h("span", { class: "kind" }, e.kind.slice("alert.".length)), " ",
    h("span", { class: "message" }, b.message), extra ? h("span", { class: "sub" }, ` (${extra})`) : null);
  const samples = Array.isArray(b.samples) ? b.samples : [];
  if (samples.length) {
    li.append(h("details", { class: "samples" },
      h("summary", {}, `${samples.length} sample${samples.length > 1 ? "s" : ""}`), samplesTable(samples)));
  }
  if (b.stacks) {
    const text = Array.isArray(b.stacks) ? b.stacks.join("\n\n") : String(b.stacks);
    li.append(h("details", { class: "stacks" }, h("summary", {}, "stacks"), h("pre", {}, text)));
  }
  return li;
}

function samplesTable(samples) {
  const rows = [];
  for (const s of samples) {
    const r = s.ram ?? {};
    const gpus = (s.gpus ?? []).map((g) =>
      `gpu${g.index}: ${fmt(g.mem_used_mb, 0)}/${fmt(g.mem_total_mb, 0)} MB, ${fmt(g.util_gpu, 0)}%, wrapper ${fmt(g.proc_mem_mb, 0)} MB`).join("; ");
    rows.push(h("tr", {}, h("td", {}, fmtTime(s.t)), h("td", {}, gpus || "—"),
      h("td", { class: "num" }, fmt(r.rss_mb, 0)), h("td", { class: "num" }, fmt(r.host_used_mb, 0)),
      h("td", { class: "num" }, fmt(r.cgroup_usage_mb, 0)), h("td", { class: "num" }, r.oom_kills ?? "—")));
  }
  return h("table", { class: "grid small" },
    h("thead", {}, h("tr", {}, ...["t", "GPUs", "rss MB", "host used MB", "cgroup MB", "oom kills"].map((c) => h("th", {}, c)))),
    h("tbody", {}, ...rows));
}
