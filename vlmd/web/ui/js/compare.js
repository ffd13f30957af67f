// The compare page: accuracy against a chosen cost for every run, with the Pareto front marked.
//
// Figures come from `GET /api/runs/{run}` (the daemon's summary, and the run's row for the
// energy per correct answer). The state stream says which runs moved: their summaries are
// re-read, at most once per REFRESH_MS.

import { svgEl } from "./charts.js";
import { followState, getJSON } from "./feed.js";
import { paretoFront } from "./pareto.js";
import { fmt, fmtPct, h } from "./util.js";

const REFRESH_MS = 1000;
const METRICS = {
  ttft_p50: { label: "TTFT p50 (ms)", get: (s) => s.ttft_ms?.p50, higher: false },
  tpot_p50: { label: "TPOT p50 (ms)", get: (s) => s.tpot_ms?.p50, higher: false },
  vram_p50: { label: "peak VRAM delta p50 (MB)", get: (s) => s.vram_peak_delta_mb?.p50, higher: false },
  items_per_s: { label: "items/s", get: (s) => s.items_per_s, higher: true },
  joules: { label: "energy per correct answer (J)", get: (s, r) => r.joules_per_correct, higher: false },
};

const runs = new Map(); // run id -> GET /api/runs/{run}
const select = document.getElementById("metric");
const stale = new Set();
let refreshTimer = null;

async function load(run) {
  const r = await getJSON(`/api/runs/${encodeURIComponent(run)}`);
  if (r) runs.set(r.run, r);
}

function render() {
  const metric = METRICS[select.value];
  const all = [...runs.values()].sort((a, b) => (a.submitted_at ?? 0) - (b.submitted_at ?? 0));
  const plotted = all.filter((r) => r.summary.accuracy != null && metric.get(r.summary, r) != null);
  const points = plotted.map((r) => ({ run: r, acc: r.summary.accuracy, cost: metric.get(r.summary, r) }));
  const front = paretoFront(points, metric.higher);
  const onFront = new Set([...front].map((i) => points[i].run.run));
  drawScatter(points, front, metric);
  const tbody = document.querySelector("#compare-table tbody");
  tbody.replaceChildren(...all.map((r) => {
    const s = r.summary;
    const pareto = onFront.has(r.run);
    return h("tr", { dataset: { run: r.run, pareto: String(pareto) }, class: pareto ? "pareto" : null },
      h("td", {}, h("a", { href: `run.html?run=${encodeURIComponent(r.run)}` }, r.name ?? r.run)),
      h("td", {}, r.model ?? "—"), h("td", {}, r.status),
      h("td", { class: "num" }, `${r.done + r.failed}/${r.total ?? "?"}`),
      h("td", { class: "num accuracy" }, fmtPct(s.accuracy)),
      h("td", { class: "num" }, fmt(s.ttft_ms?.p50)), h("td", { class: "num" }, fmt(s.tpot_ms?.p50)),
      h("td", { class: "num" }, fmt(s.vram_peak_delta_mb?.p50)),
      h("td", { class: "num" }, fmt(s.items_per_s, 2)),
      h("td", { class: "num joules" }, r.energy_source === "na" ? "na" : fmt(r.joules_per_correct, 1)),
      h("td", { class: "front" }, pareto ? "★ front" : ""));
  }));
}

function drawScatter(points, front, metric) {
  const el = document.getElementById("scatter");
  const width = Math.max(el.clientWidth, 400);
  const height = 360;
  const pad = { l: 60, r: 20, t: 16, b: 44 };
  const svg = svgEl("svg", { width, height });
  el.replaceChildren(svg);
  el.dataset.points = String(points.length);
  if (!points.length) {
    svg.append(svgEl("text", { x: width / 2, y: height / 2, class: "empty-note" },
      "no run has both an accuracy and this figure yet"));
    return;
  }
  const span = (vals) => {
    let lo = Math.min(...vals), hi = Math.max(...vals);
    const m = (hi - lo) * 0.08 || Math.abs(hi) * 0.1 || 1;
    return [lo - m, hi + m];
  };
  const [c0, c1] = span(points.map((p) => p.cost));
  const [a0, a1] = span(points.map((p) => p.acc));
  const x = (v) => pad.l + ((v - c0) / (c1 - c0)) * (width - pad.l - pad.r);
  const y = (v) => pad.t + (1 - (v - a0) / (a1 - a0)) * (height - pad.t - pad.b);
  for (let i = 0; i <= 4; i++) {
    const cv = c0 + ((c1 - c0) * i) / 4;
    const av = a0 + ((a1 - a0) * i) / 4;
    svg.append(svgEl("line", { x1: x(cv), x2: x(cv), y1: pad.t, y2: height - pad.b, class: "gridline" }));
    svg.append(svgEl("line", { x1: pad.l, x2: width - pad.r, y1: y(av), y2: y(av), class: "gridline" }));
    svg.append(svgEl("text", { x: x(cv), y: height - pad.b + 16, class: "tick mid" }, fmt(cv, 1)));
    svg.append(svgEl("text", { x: pad.l - 6, y: y(av) + 4, class: "tick end" }, fmtPct(av)));
  }
  svg.append(svgEl("text", { x: (pad.l + width - pad.r) / 2, y: height - 6, class: "axis-label mid" },
    `${metric.label} (${metric.higher ? "higher" : "lower"} is better) →`));
  svg.append(svgEl("text", { x: 14, y: pad.t + 4, class: "axis-label", transform: `rotate(90 14 ${pad.t + 4})` }, "accuracy →"));
  const frontPts = [...front].map((i) => points[i]).sort((p, q) => p.cost - q.cost);
  if (frontPts.length > 1) {
    svg.append(svgEl("polyline", { points: frontPts.map((p) => `${x(p.cost)},${y(p.acc)}`).join(" "),
      class: "front-line" }));
  }
  points.forEach((p, i) => {
    const on = front.has(i);
    const c = svgEl("circle", { cx: x(p.cost), cy: y(p.acc), r: on ? 7 : 5, class: on ? "pt on-front" : "pt",
      "data-run": p.run.run, "data-pareto": String(on) });
    c.append(svgEl("title", {}, `${p.run.name ?? p.run.run}: accuracy ${fmtPct(p.acc)}, ${metric.label} ${fmt(p.cost, 2)}`));
    svg.append(c, svgEl("text", { x: x(p.cost) + 9, y: y(p.acc) - 7, class: "pt-label" }, p.run.name ?? p.run.run));
  });
}

function refreshSoon(run) {
  stale.add(run);
  if (refreshTimer) return;
  refreshTimer = setTimeout(async () => {
    refreshTimer = null;
    const batch = [...stale];
    stale.clear();
    await Promise.all(batch.map(load));
    render();
  }, REFRESH_MS);
}

async function main() {
  const list = await getJSON("/api/runs");
  await Promise.all(list.runs.map((r) => load(r.run)));
  render();
  select.addEventListener("change", render);
  let width = 0;
  new ResizeObserver(([entry]) => {
    if (Math.round(entry.contentRect.width) !== width) {
      width = Math.round(entry.contentRect.width);
      render();
    }
  }).observe(document.getElementById("scatter"));
  const feed = followState({
    after: list.last_seq,
    onState(message) {
      for (const row of message.runs) refreshSoon(row.run);
    },
  });
  window.vlmd = { runs, feed, render };
}

main();
