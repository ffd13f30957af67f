// The charts: time series over uPlot (vendored, the global `uPlot`), histograms as inline SVG.

import { fmt, h } from "./util.js";

const COLORS = ["#2b6cb0", "#c05621", "#2f855a", "#6b46c1", "#b83280", "#319795", "#975a16",
  "#4a5568"];
const SVG = "http://www.w3.org/2000/svg";

/**
 * A live time-series chart in `el` over a Series; `markers()` gives the ts of events to mark
 * (alerts) as red vertical lines. `update()` redraws from the series if it changed.
 */
export class TimeChart {
  constructor(el, { unit, markers = () => [] }) {
    this.el = el;
    this.unit = unit;
    this.markers = markers;
    this.plot = null;
    this.names = [];
    this.drawnVersion = -1;
    new ResizeObserver(() => this.plot?.setSize(this.size())).observe(el);
  }

  size() {
    return { width: Math.max(this.el.clientWidth, 200), height: 200 };
  }

  build(names) {
    this.plot?.destroy();
    this.names = [...names];
    const markers = this.markers;
    const opts = {
      ...this.size(),
      legend: { live: true },
      cursor: { drag: { x: true, y: false } },
      scales: { x: { time: true } },
      axes: [{}, { label: this.unit, size: 60 }],
      series: [{}, ...names.map((name, i) => ({
        label: name, stroke: COLORS[i % COLORS.length], width: 1.5, spanGaps: true,
        dash: name.endsWith(" wrapper") ? [6, 3] : undefined,
        value: (u, v) => fmt(v, 0),
      }))],
      hooks: {
        draw: [(u) => {
          const ctx = u.ctx;
          ctx.save();
          ctx.strokeStyle = "#e53e3e";
          ctx.lineWidth = 1.5 * devicePixelRatio;
          for (const ts of markers()) {
            const x = u.valToPos(ts, "x", true);
            if (x < u.bbox.left || x > u.bbox.left + u.bbox.width) continue;
            ctx.beginPath();
            ctx.moveTo(x, u.bbox.top);
            ctx.lineTo(x, u.bbox.top + u.bbox.height);
            ctx.stroke();
          }
          ctx.restore();
        }],
      },
    };
    this.plot = new uPlot(opts, [[], ...names.map(() => [])], this.el);
  }

  /** Redraw from `series` when it changed since the last draw. */
  update(series, force = false) {
    if (!force && series.version === this.drawnVersion) return;
    if (!this.plot || series.names.length !== this.names.length) this.build(series.names);
    const data = series.view();
    this.plot.setData(data);
    this.drawnVersion = series.version;
    this.el.dataset.points = String(series.count);
    this.el.dataset.drawn = String(data[0].length);
    this.el.dataset.series = series.names.join(",");
  }
}

/**
 * A histogram of `values` in `el` (SVG, `bins` bars) with the daemon's figures of the metric
 * under it (`stats`: count, mean, p50, p90, p99, max, from the run's summary) and its p50 and
 * p99 marked. `el.dataset.count` holds how many values it shows.
 */
export function drawHistogram(el, values, { unit, stats, bins = 30 }) {
  const width = Math.max(el.clientWidth, 240);
  const height = 150;
  const pad = { l: 36, r: 8, t: 8, b: 22 };
  el.replaceChildren();
  el.dataset.count = String(values.length);
  const d = stats ?? { count: 0, mean: null, p50: null, p90: null, p99: null, max: null };
  el.dataset.p50 = d.p50 ?? "";
  el.dataset.p99 = d.p99 ?? "";
  if (!values.length) {
    el.append(h("div", { class: "empty" }, "no values yet"));
    return;
  }
  let lo = Infinity, hi = -Infinity;
  for (const v of values) { if (v < lo) lo = v; if (v > hi) hi = v; }
  if (hi === lo) { lo -= 0.5; hi += 0.5; }
  const counts = new Array(bins).fill(0);
  for (const v of values) counts[Math.min(bins - 1, Math.floor(((v - lo) / (hi - lo)) * bins))]++;
  const top = Math.max(...counts);
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("width", width);
  svg.setAttribute("height", height);
  const w = (width - pad.l - pad.r) / bins;
  const plotH = height - pad.t - pad.b;
  counts.forEach((c, i) => {
    if (!c) return;
    const bh = (c / top) * plotH;
    const r = svgEl("rect", { x: pad.l + i * w + 0.5, y: pad.t + plotH - bh, width: Math.max(w - 1, 1),
      height: bh, class: "bin" });
    const binLo = lo + ((hi - lo) * i) / bins;
    r.append(svgEl("title", {}, `${fmt(binLo, 1)}–${fmt(binLo + (hi - lo) / bins, 1)} ${unit}: ${c}`));
    svg.append(r);
  });
  const x = (v) => pad.l + ((v - lo) / (hi - lo)) * (width - pad.l - pad.r);
  for (const [name, v] of [["p50", d.p50], ["p99", d.p99]]) {
    if (v === null || v === undefined) continue;
    svg.append(svgEl("line", { x1: x(v), x2: x(v), y1: pad.t, y2: pad.t + plotH, class: `q ${name}` }));
  }
  svg.append(svgEl("line", { x1: pad.l, x2: width - pad.r, y1: pad.t + plotH, y2: pad.t + plotH, class: "axis" }));
  svg.append(svgEl("text", { x: pad.l, y: height - 6, class: "tick" }, fmt(lo, 1)));
  svg.append(svgEl("text", { x: width - pad.r, y: height - 6, class: "tick end" }, `${fmt(hi, 1)} ${unit}`));
  svg.append(svgEl("text", { x: pad.l - 4, y: pad.t + 10, class: "tick end" }, String(top)));
  el.append(svg, h("div", { class: "quantiles" },
    `n=${d.count} · mean ${fmt(d.mean)} · p50 ${fmt(d.p50)} · p90 ${fmt(d.p90)} · p99 ${fmt(d.p99)} · max ${fmt(d.max)} ${unit}`));
}

/** An SVG element with attributes and text. */
export function svgEl(tag, attrs = {}, text = null) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  if (text !== null) el.textContent = text;
  return el;
}
