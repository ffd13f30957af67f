// The replay page: a past run played back from the log at a chosen speed, or scrubbed to a moment.
//
// The run's events are read through `/api/events?run=` (paged) and folded into the same RunModel
// and widgets as the run page. Playback keeps the original spacing of `ts` (seq order; a ts
// earlier than one already played counts as that one), scaled by the speed; seeking backwards
// refolds from the start, which is quick because the fold is O(events).

import { readEvents, withToken } from "./feed.js";
import { showDatasetteLink } from "./links.js";
import { RunModel } from "./runmodel.js";
import { RunView, mountRunLayout } from "./runview.js";
import { fmtDuration, param, setText } from "./util.js";

const SLIDER_STEPS = 1000;

const run = param("run");
const main = document.querySelector("main");
const state = document.getElementById("replay-state");
const slider = document.getElementById("scrub");
const speedSel = document.getElementById("speed");
const playBtn = document.getElementById("play");

let events = [];
let times = []; // the playback time of each event: running max of ts
let t0 = 0, t1 = 0;
let cursor = 0; // events[0..cursor) are folded
let vt = 0; // the replay clock, in the run's ts
let playing = false;
let lastFrame = 0;
let model = null;
let view = null;

function setState(s) {
  state.dataset.state = s;
  state.textContent = s;
  playBtn.textContent = s === "playing" ? "pause" : "play";
}

/** Fold events up to replay time `t` (refolding from the start when `t` is behind). */
function seek(t) {
  if (t < vt || !model) {
    model = new RunModel();
    cursor = 0;
    view.setModel(model);
  }
  vt = t;
  while (cursor < events.length && times[cursor] <= vt) model.apply(events[cursor++]);
  view.schedule();
  showClock();
}

function showClock() {
  setText(document.getElementById("replay-clock"),
    `${fmtDuration(vt - t0)} of ${fmtDuration(t1 - t0)} · ${cursor} / ${events.length} events`);
  document.getElementById("replay-pos").dataset.cursor = String(cursor);
  if (!slider.matches(":active")) {
    slider.value = String(t1 > t0 ? Math.round(((vt - t0) / (t1 - t0)) * SLIDER_STEPS) : SLIDER_STEPS);
  }
}

function frame(now) {
  if (!playing) return;
  const dt = (now - lastFrame) / 1000;
  lastFrame = now;
  seek(Math.min(vt + dt * Number(speedSel.value), t1));
  if (cursor >= events.length) {
    playing = false;
    setState("ended");
    return;
  }
  requestAnimationFrame(frame);
}

function play() {
  if (cursor >= events.length) seek(t0 - 1);
  playing = true;
  setState("playing");
  lastFrame = performance.now();
  requestAnimationFrame(frame);
}

async function main_() {
  if (!run) {
    main.textContent = "No run given: open this page as replay.html?run=RUN.";
    return;
  }
  document.title = `vlmd · replay ${run}`;
  mountRunLayout(main);
  document.getElementById("csv-link").href = withToken(`/api/runs/${encodeURIComponent(run)}/answers.csv`);
  const other = document.getElementById("other-link");
  other.href = `run.html?run=${encodeURIComponent(run)}`;
  other.textContent = "live view";
  showDatasetteLink(run);
  view = new RunView(run);
  setState("loading");
  events = await readEvents({ run });
  let max = -Infinity;
  times = events.map((e) => (max = Math.max(max, e.ts)));
  t0 = events.length ? times[0] : 0;
  t1 = events.length ? times[times.length - 1] : 0;
  seek(t0 - 1);
  setState("paused");
  playBtn.disabled = false;
  playBtn.addEventListener("click", () => {
    if (playing) {
      playing = false;
      setState("paused");
    } else play();
  });
  slider.addEventListener("input", () => {
    seek(t0 + ((t1 - t0) * Number(slider.value)) / SLIDER_STEPS);
    if (!playing) setState(cursor >= events.length ? "ended" : "paused");
  });
  document.getElementById("to-end").addEventListener("click", () => {
    playing = false;
    seek(t1);
    setState("ended");
  });
  window.vlmd = { get model() { return model; }, view, seek };
}

main_();
