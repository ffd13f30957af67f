// The compare page: accuracy against a chosen cost for the runs of one dataset, with the Pareto
// front marked, and two runs picked for a diff.
//
// What is compared with what, and which runs are on the front, is the daemon's decision
// (`GET /api/compare?cost=`, vlmd/projections/compare.py, as `vlmd report` shows it): this page
// draws it. The state stream says when runs moved: the comparison is read again, at most once
// per REFRESH_MS.

import { svgEl } from "./charts.js";
import { followState, getJSON } from "./feed.js";
import { fmt, fmtPct, h, param } from "./util.js";

const REFRESH_MS = 1000;

const metric = document.getElementById("metric");
const datasetSelect = document.getElementById("dataset");
const pick = { a: param("a"), b: param("b") }; // the runs chosen for a diff
let data = null; // GET /api/compare
let chosen = param("dataset"); // the group shown (its key)
let refreshTimer = null;
let asked = 0; // requests made: only the latest one's answer is drawn

async function load() {
  const cost = metric.value || param("cost") || "ttft_p50";
  const mine = ++asked;
  const found = await getJSON(`/api/compare?cost=${encodeURIComponent(cost)}`);
  if (mine !== asked) return;
  data = found;
  render();
}

function groupLabel(g) {
  const path = g.paths[0] ?? "(no dataset named)";
  const sha = g.dataset_sha256 ? `sha256 ${g.dataset_sha256.slice(0, 12)}` : "content not recorded";
  const n = g.runs.length;
  return `${path.split("/").pop()} · ${sha} · ${g.total ?? "?"} items · ${n} run${n === 1 ? "" : "s"}`;
}

function newest(groups) {
  let best = null;
  for (const g of groups) {
    for (const r of g.runs) if (!best || (r.submitted_at ?? 0) >= best.at) best = { key: g.key, at: r.submitted_at ?? 0 };
  }
  return best?.key ?? null;
}

function fillControls() {
  if (!metric.options.length) {
    for (const c of data.costs) {
      metric.append(h("option", { value: c.name }, `${c.label} (${c.unit}, ${c.higher_is_better ? "higher" : "lower"} is better)`));
    }
    metric.value = data.cost.name;
  }
  if (!data.groups.some((g) => g.key === chosen)) chosen = newest(data.groups);
  datasetSelect.replaceChildren(...data.groups.map((g) => h("option", { value: g.key }, groupLabel(g))));
  if (chosen) datasetSelect.value = chosen;
}

function render() {
  fillControls();
  const group = data.groups.find((g) => g.key === chosen);
  const runs = group?.runs ?? [];
  const cost = data.cost;
  document.getElementById("dataset-info").textContent = group
    ? `${group.paths.join(", ") || "(no dataset named)"}${group.dataset_sha256 ? ` · sha256 ${group.dataset_sha256}` : " · content not recorded (submitted before vlmd hashed datasets, or not through vlmd)"}`
    : "no runs yet";
  const points = runs.filter((r) => r.accuracy != null && r.costs[cost.name] != null)
    .map((r) => ({ run: r, acc: r.accuracy, cost: r.costs[cost.name] }));
  drawScatter(points, cost);
  document.querySelector("#compare-table .cost-head").textContent = `${cost.label} ${cost.unit}`;
  const tbody = document.querySelector("#compare-table tbody");
  tbody.replaceChildren(...runs.map(tableRow));
  showDiffLink();
}

function choice(which, run) {
  return h("input", { type: "radio", name: `pick-${which}`, value: run, class: `pick-${which}`,
    checked: pick[which] === run, onchange: () => { pick[which] = run; showDiffLink(); } });
}

function tableRow(r) {
  const c = r.costs;
  return h("tr", { dataset: { run: r.run, pareto: String(r.front), excluded: r.excluded ?? "" },
    class: r.front ? "pareto" : r.excluded ? "excluded" : null },
    h("td", {}, choice("a", r.run)), h("td", {}, choice("b", r.run)),
    h("td", {}, h("a", { href: `run.html?run=${encodeURIComponent(r.run)}` }, r.name ?? r.run)),
    h("td", {}, r.model ?? "—"),
    h("td", {}, h("span", { class: `status st-${r.outcome ?? r.status}` }, (r.outcome ?? r.status).replaceAll("_", " "))),
    h("td", { class: "num" }, `${r.done + r.failed}/${r.total ?? "?"}`),
    h("td", { class: "num accuracy" }, fmtPct(r.accuracy)),
    h("td", { class: "num" }, fmt(c.ttft_p50)), h("td", { class: "num" }, fmt(c.tpot_p50)),
    h("td", { class: "num" }, fmt(c.vram_p50)), h("td", { class: "num" }, fmt(c.items_per_s, 2)),
    h("td", { class: "num joules" }, r.energy_source === "na" ? "na" : fmt(c.joules_per_correct, 1)),
    h("td", { class: "num cost" }, fmt(c[data.cost.name], 2)),
    h("td", { class: "front" }, r.front ? "★ front" : r.excluded ? `never: ${r.excluded}` : ""));
}

function showDiffLink() {
  const link = document.getElementById("diff-link");
  link.hidden = !(pick.a && pick.b && pick.a !== pick.b);
  if (!link.hidden) link.href = `diff.html?a=${encodeURIComponent(pick.a)}&b=${encodeURIComponent(pick.b)}`;
}

function drawScatter(points, cost) {
  const el = document.getElementById("scatter");
  const width = Math.max(el.clientWidth, 400);
  const height = 360;
  const pad = { l: 60, r: 20, t: 16, b: 44 };
  const svg = svgEl("svg", { width, height });
  el.replaceChildren(svg);
  el.dataset.points = String(points.length);
  if (!points.length) {
    svg.append(svgEl("text", { x: width / 2, y: height / 2, class: "empty-note" },
      "no run of this dataset has both an accuracy and this figure yet"));
    return;
  }
  const span = (vals) => {
    const lo = Math.min(...vals), hi = Math.max(...vals);
    const m = (hi - lo) * 0.08 || Math.abs(hi) * 0.1 || 1;
    return [lo - m, hi + m];
  };
  const [c0, c1] = span(points.map((p) => p.cost));
  let [a0, a1] = span(points.map((p) => p.acc));
  [a0, a1] = [Math.max(a0, 0), Math.min(a1, 1)]; // accuracy lies in 0..1
  if (a1 - a0 < 0.01) [a0, a1] = [Math.max(a0 - 0.05, 0), Math.min(a1 + 0.05, 1)];
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
    `${cost.label} (${cost.unit}, ${cost.higher_is_better ? "higher" : "lower"} is better) →`));
  svg.append(svgEl("text", { x: 14, y: pad.t + 4, class: "axis-label", transform: `rotate(90 14 ${pad.t + 4})` }, "accuracy →"));
  const front = points.filter((p) => p.run.front).sort((p, q) => p.cost - q.cost);
  if (front.length > 1) {
    svg.append(svgEl("polyline", { points: front.map((p) => `${x(p.cost)},${y(p.acc)}`).join(" "),
      class: "front-line" }));
  }
  for (const p of points) {
    const on = p.run.front;
    const cls = on ? "pt on-front" : p.run.excluded ? "pt excluded" : "pt";
    const c = svgEl("circle", { cx: x(p.cost), cy: y(p.acc), r: on ? 7 : 5, class: cls,
      "data-run": p.run.run, "data-pareto": String(on) });
    const why = p.run.excluded ? ` (never on the front: ${p.run.excluded})` : "";
    c.append(svgEl("title", {}, `${p.run.name ?? p.run.run}: accuracy ${fmtPct(p.acc)}, ${cost.label} ${fmt(p.cost, 2)}${why}`));
    svg.append(c, svgEl("text", { x: x(p.cost) + 9, y: y(p.acc) - 7, class: "pt-label" }, p.run.name ?? p.run.run));
  }
}

function refreshSoon() {
  if (refreshTimer) return;
  refreshTimer = setTimeout(async () => {
    refreshTimer = null;
    await load();
  }, REFRESH_MS);
}

async function main() {
  await load();
  metric.addEventListener("change", load);
  datasetSelect.addEventListener("change", () => { chosen = datasetSelect.value; render(); });
  let width = 0;
  new ResizeObserver(([entry]) => {
    if (Math.round(entry.contentRect.width) !== width) {
      width = Math.round(entry.contentRect.width);
      render();
    }
  }).observe(document.getElementById("scatter"));
  const feed = followState({
    after: data.head,
    onState(message) {
      if (message.runs.length) refreshSoon();
    },
  });
  window.vlmd = { get data() { return data; }, feed, render };
}

main();
