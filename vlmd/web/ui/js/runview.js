// The run page's widgets over a RunModel: headline, resource charts, histograms, answers table
// and alerts timeline. The run page and the replay page both use it; redraws are coalesced to
// animation frames, and the O(items) parts (histograms, table) to at most SLOW_EVERY_MS. Every
// figure is the daemon's (the run's row, its item rows, its summary's percentiles); the
// histograms' bars are drawn from the item rows' values.

import { TimeChart, drawHistogram } from "./charts.js";
import { withToken } from "./feed.js";
import { progressBar, updateRunFields } from "./runrow.js";
import { RUN_LAYOUT } from "./runlayout.js";
import { fmt, fmtTime, frameScheduler, h, setText } from "./util.js";

const SLOW_EVERY_MS = 250;
const SLOW_SHARE = 0.2; // the slow parts may take at most this share of the main thread
const collator = new Intl.Collator(undefined, { numeric: true });
const PAGE_ROWS = 100;
const COLUMNS = [
  ["item", "item"], ["outcome", "outcome"], ["answer", "answer"], ["expected", "expected"],
  ["score", "score"], ["ttft_ms", "TTFT ms"], ["tpot_ms", "TPOT ms"], ["e2e_ms", "e2e ms"],
  ["input_tokens", "in tok"], ["output_tokens", "out tok"], ["vram_peak_delta_mb", "VRAM Δ MB"],
  ["error", "error"],
];
const NUMERIC = new Set(["score", "ttft_ms", "tpot_ms", "e2e_ms", "input_tokens", "output_tokens",
  "vram_peak_delta_mb"]);
const DIGITS = { score: 2, input_tokens: 0, output_tokens: 0 }; // counts are whole; others 1

/** Put the run widgets' markup into `container` (before constructing a RunView). */
export function mountRunLayout(container) {
  container.innerHTML = RUN_LAYOUT;
  container.querySelector("#run-head .progress-wrap").append(progressBar());
}

const EMPTY_ROW = { done: 0, failed: 0, total: null, status: "—", rate: null, eta_s: null,
  accuracy: null, alerts: 0, model: null, dataset: null, shards: {}, reason: null };

/** An item row's value shown in the table (an expected answer may be a list of them). */
const shown = (r, k) => (Array.isArray(r[k]) ? r[k].join(" | ") : String(r[k] ?? ""));

export class RunView {
  constructor(runParam) {
    this.runParam = runParam;
    this.model = null;
    this.slowAt = 0;
    this.slowCost = 0;
    this.slowTimer = null;
    this.sort = { key: "item", dir: 1 };
    this.filter = "all";
    this.page = 0;
    this.openImages = new Set();
    const markers = () => (this.model ? this.model.alerts.map((a) => a.ts) : []);
    this.charts = {
      memory: new TimeChart(document.getElementById("chart-memory"), { unit: "MB", markers }),
      util: new TimeChart(document.getElementById("chart-util"), { unit: "%", markers }),
      ram: new TimeChart(document.getElementById("chart-ram"), { unit: "MB", markers }),
      server: new TimeChart(document.getElementById("chart-server"), { unit: "% · requests", markers }),
    };
    this.schedule = frameScheduler(() => this.render());
    this.bindAnswerControls();
  }

  /** Show `model` (a fresh one after a replay seek redraws everything). */
  setModel(model) {
    this.model = model;
    this.openImages.clear();
    this.shownSignature = null;
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
        this.renderAnswers();
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

  /** The summary's words: the commonest item errors with counts, how tokens were counted and
   * why VRAM figures are missing or ~0 (the daemon's summary decides them all). */
  renderSummary() {
    const m = this.model;
    m.dirty.summary = false;
    const s = m.summary ?? {};
    const failures = s.failures ?? [];
    document.getElementById("failures").hidden = failures.length === 0;
    document.querySelector("#failures .failures-list").replaceChildren(...failures.map((f) =>
      h("li", { dataset: { count: f.count } }, h("span", { class: "count" }, String(f.count)), " ",
        h("span", { class: "why" }, f.reason))));
    const notes = [];
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

  bindAnswerControls() {
    document.getElementById("answer-filter").addEventListener("change", (e) => {
      this.filter = e.target.value;
      this.page = 0;
      this.renderAnswers();
    });
    const head = document.querySelector("#answers-table thead tr");
    for (const [key, label] of COLUMNS) {
      head.append(h("th", {
        dataset: { key }, class: NUMERIC.has(key) ? "num sortable" : "sortable",
        onclick: () => {
          this.sort = { key, dir: this.sort.key === key ? -this.sort.dir : 1 };
          this.renderAnswers();
        },
      }, label));
    }
    head.append(h("th", {}, "image"));
    document.getElementById("answers-prev").addEventListener("click", () => { this.page--; this.renderAnswers(); });
    document.getElementById("answers-next").addEventListener("click", () => { this.page++; this.renderAnswers(); });
  }

  renderAnswers() {
    if (!this.model) return;
    const all = [...this.model.items.values()];
    const rows = this.filter === "all" ? all : all.filter((r) => r.outcome === this.filter);
    const { key, dir } = this.sort;
    const val = (r) => (NUMERIC.has(key) ? r[key] : shown(r, key));
    const cmp = NUMERIC.has(key)
      ? (a, b) => ((val(a) ?? -Infinity) - (val(b) ?? -Infinity)) * dir
      : (a, b) => collator.compare(String(val(a)), String(val(b))) * dir;
    rows.sort(cmp);
    const pages = Math.max(1, Math.ceil(rows.length / PAGE_ROWS));
    this.page = Math.min(Math.max(this.page, 0), pages - 1);
    const page = rows.slice(this.page * PAGE_ROWS, (this.page + 1) * PAGE_ROWS);
    const table = document.getElementById("answers-table");
    table.dataset.rows = String(rows.length);
    setText(document.getElementById("answers-page"),
      `${rows.length} of ${all.length} items · page ${this.page + 1} of ${pages}`);
    document.getElementById("answers-prev").disabled = this.page === 0;
    document.getElementById("answers-next").disabled = this.page >= pages - 1;
    // Rebuild the rows only when what they show changed (a long run adds rows off this page).
    const signature = `${key}${dir}|${[...this.openImages]}|${page.map((r) => `${r.item}@${r.seq}`)}`;
    if (signature === this.shownSignature) return;
    this.shownSignature = signature;
    const tbody = document.querySelector("#answers-table tbody");
    const out = [];
    for (const r of page) {
      out.push(h("tr", { dataset: { item: r.item, outcome: r.outcome, seq: r.seq } },
        ...COLUMNS.map(([k]) => h("td", { class: NUMERIC.has(k) ? "num" : k },
          NUMERIC.has(k) ? fmt(r[k], DIGITS[k] ?? 1) : shown(r, k))),
        h("td", {}, h("button", { class: "show-image", onclick: () => this.toggleImage(r.item) },
          this.openImages.has(r.item) ? "hide" : "show"))));
      if (this.openImages.has(r.item)) out.push(this.imageRow(r.item));
    }
    tbody.replaceChildren(...out);
    for (const th of document.querySelectorAll("#answers-table th[data-key]")) {
      th.dataset.sorted = th.dataset.key === key ? (dir > 0 ? "asc" : "desc") : "";
    }
  }

  toggleImage(item) {
    if (this.openImages.has(item)) this.openImages.delete(item);
    else this.openImages.add(item);
    this.renderAnswers();
  }

  imageRow(item) {
    const run = this.model.row?.run ?? this.runParam;
    const url = withToken(`/api/runs/${encodeURIComponent(run)}/items/${encodeURIComponent(item)}/image`);
    const cell = h("td", { colspan: COLUMNS.length + 1, class: "image-cell" });
    const img = h("img", { src: url, alt: `item ${item}` });
    img.addEventListener("error", () => cell.replaceChildren(h("span", { class: "image-missing" }, "image not available")));
    cell.append(img);
    return h("tr", { class: "image-row", dataset: { imageFor: item } }, cell);
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
