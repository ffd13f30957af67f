// Small shared helpers: formatting, DOM building, and redraws coalesced to animation frames.

/** A number with `digits` decimals, or "—" when absent. */
export function fmt(v, digits = 1) {
  if (v === null || v === undefined || Number.isNaN(v)) return "—";
  return Number(v).toFixed(digits);
}

/** Seconds as "1h 02m", "3m 04s" or "12s"; "—" when absent. */
export function fmtDuration(s) {
  if (s === null || s === undefined || !Number.isFinite(s)) return "—";
  s = Math.round(s);
  if (s >= 3600) return `${Math.floor(s / 3600)}h ${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
  if (s >= 60) return `${Math.floor(s / 60)}m ${String(s % 60).padStart(2, "0")}s`;
  return `${s}s`;
}

/** A wall-clock timestamp (seconds) as local time. */
export function fmtTime(ts) {
  if (ts === null || ts === undefined) return "—";
  const d = new Date(ts * 1000);
  return d.toLocaleTimeString([], { hour12: false }) + "." + String(d.getMilliseconds()).padStart(3, "0");
}

export const fmtPct = (v) => (v === null || v === undefined ? "—" : `${(v * 100).toFixed(1)}%`);

/** Create an element: h("td", {class: "x", dataset: {k: "v"}}, "text", child, ...). */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "dataset") Object.assign(el.dataset, v);
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) if (c !== null && c !== undefined) el.append(c);
  return el;
}

/** Set text only when it changed (keeps DOM mutations, and layout, to what really moved). */
export function setText(el, text) {
  if (el && el.textContent !== text) el.textContent = text;
}

/**
 * Coalesce redraws: `schedule()` asks for `draw()` at the next animation frame, once, however
 * many events arrived since the last frame.
 */
export function frameScheduler(draw) {
  let pending = false;
  return function schedule() {
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => {
      pending = false;
      draw();
    });
  };
}

/** The page's query parameter `name`, or null. */
export const param = (name) => new URLSearchParams(location.search).get(name);
