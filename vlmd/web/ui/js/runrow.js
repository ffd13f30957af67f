// The run's headline figures (status, progress bar, items/s, ETA, accuracy, alerts, shards,
// reason, phase), shared by the runs table and the run/replay pages, from the run's row as the
// daemon serves it. Every figure lives in an element with a stable class inside
// `[data-run="RUN"]`, and the container carries the row's values as data attributes too
// (data-done, -failed, -total, -status, -outcome, -accuracy, -alerts, -reason, -shards, and
// -circular-accuracy where the page shows it).
// The badge says how an ended run ended (the row's `outcome`: a run that finished with failed
// items is not a green "finished"); before the first items, `phase` says what the agents do.
// Joules per correct answer and the KV-cache peak show where the page has a place for them.

import { fmt, fmtDuration, fmtPct, h, setText } from "./util.js";

/** The progress bar: done (green) then failed (red) segments, and "done / total (failed)". */
export function progressBar() {
  return h("div", { class: "progress" },
    h("div", { class: "bar" }, h("div", { class: "seg-done" }), h("div", { class: "seg-failed" })),
    h("div", { class: "counts" },
      h("span", { class: "done" }, "0"), " / ", h("span", { class: "total" }, "?"),
      h("span", { class: "failed-wrap" }, " (", h("span", { class: "failed" }, "0"), " failed)")));
}

/** A row of the runs table for `row` (a run's row from `GET /api/runs` or the state stream). */
export function runTableRow(row) {
  const label = row.name ? `${row.name}` : row.run;
  const href = `run.html?run=${encodeURIComponent(row.run)}`;
  const tr = h("tr", { dataset: { run: row.run } },
    h("td", {}, h("a", { class: "run-link", href }, label),
      h("div", { class: "sub run-id" }, row.name ? row.run : "")),
    h("td", { class: "model" }), h("td", { class: "dataset" }),
    h("td", {}, h("span", { class: "status" }), h("div", { class: "sub phase" })),
    h("td", { class: "progress-cell" }, progressBar()),
    h("td", { class: "num rate" }), h("td", { class: "num eta" }),
    h("td", { class: "num accuracy" }), h("td", { class: "num alerts" }),
    h("td", {}, h("a", { href: `replay.html?run=${encodeURIComponent(row.run)}` }, "replay")));
  updateRunFields(tr, row);
  return tr;
}

/** Bring every figure inside `el` up to date with `row`; touches only what changed. */
export function updateRunFields(el, row) {
  const total = row.total;
  const q = (cls) => el.querySelector(`.${cls}`);
  el.dataset.done = row.done;
  el.dataset.failed = row.failed;
  el.dataset.total = total ?? "";
  el.dataset.status = row.status;
  el.dataset.outcome = row.outcome ?? "";
  el.dataset.accuracy = row.accuracy ?? "";
  el.dataset.alerts = row.alerts;
  el.dataset.reason = row.reason ?? "";
  el.dataset.shards = JSON.stringify(row.shards ?? {});
  setText(q("model"), row.model ?? "—");
  setText(q("dataset"), row.dataset ?? "—");
  const status = q("status");
  if (status) {
    const badge = row.outcome ?? row.status;
    setText(status, badge.replaceAll("_", " "));
    status.className = `status st-${badge}`;
    status.title = row.reason ?? "";
  }
  setText(q("reason"), row.reason ?? "");
  setText(q("phase"), phaseText(row.phase));
  const shards = Object.entries(row.shards ?? {});
  setText(q("shards"), shards.length > 1 || shards.some(([, s]) => s === "scheduled")
    ? `shards: ${shards.map(([name, s]) => `${name} ${s}`).join(" · ")}` : "");
  setText(q("done"), String(row.done));
  setText(q("failed"), String(row.failed));
  setText(q("total"), total === null || total === undefined ? "?" : String(total));
  const wrap = q("failed-wrap");
  if (wrap) wrap.hidden = !row.failed;
  const denom = Math.max(total || 0, row.done + row.failed, 1);
  const segDone = q("seg-done");
  const segFailed = q("seg-failed");
  if (segDone) segDone.style.width = `${(100 * row.done) / denom}%`;
  if (segFailed) segFailed.style.width = `${(100 * row.failed) / denom}%`;
  setText(q("rate"), row.rate ? fmt(row.rate, 2) : "—");
  setText(q("eta"), fmtDuration(row.eta_s));
  setText(q("accuracy"), fmtPct(row.accuracy));
  // CircularEval's accuracy, for a circular file (MMBench's), where the page has a place for it
  const circular = q("circular-accuracy");
  if (circular) {
    el.dataset.circularAccuracy = row.circular_accuracy ?? "";
    setText(circular, fmtPct(row.circular_accuracy));
    q("circular-figure").hidden = row.circular_accuracy === null || row.circular_accuracy === undefined;
  }
  // the fold's figures of energy (na: a GPU without an energy counter) and the engine's KV cache
  setText(q("joules"), row.energy_source === "na" ? "na" : fmt(row.joules_per_correct, 1));
  setText(q("kv-peak"), fmtPct(row.kv_cache_peak));
  const alerts = q("alerts");
  if (alerts) {
    setText(alerts, String(row.alerts));
    alerts.classList.toggle("has-alerts", row.alerts > 0);
    alerts.title = row.last_alert ?? "";
  }
}

/** What the run's agents are doing (the row's `phase`), shown until items flow; "" after. */
export function phaseText(phase) {
  if (!phase || phase.phase === "evaluating") return "";
  return phase.message || phase.phase;
}
