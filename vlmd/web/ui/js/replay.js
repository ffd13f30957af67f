// The replay page: a past run played back through the daemon's fold, or scrubbed to a moment.
//
// Playing follows `WS /api/replay?run=RUN&speed=S&after=SEQ`: the daemon folds the run's events
// again and sends its states paced by their original spacing divided by the speed (the same
// messages as the state stream, plus the step's samples and alerts for the charts). Scrubbing
// asks `GET /api/runs/{run}/state?ts=T`, the run folded up to that moment, and reads the
// samples and alerts up to there for the charts. Pausing closes the stream; playing again
// resumes it after the seq reached. Nothing here folds events into figures.

import { getJSON, readEvents, withToken, wsUrl } from "./feed.js";
import { showDatasetteLink } from "./links.js";
import { DRAWN_KINDS, RunModel } from "./runmodel.js";
import { RunView, mountRunLayout } from "./runview.js";
import { fmtDuration, param, setText } from "./util.js";

const SLIDER_STEPS = 1000;

const run = param("run");
const main = document.querySelector("main");
const stateEl = document.getElementById("replay-state");
const slider = document.getElementById("scrub");
const speedSel = document.getElementById("speed");
const playBtn = document.getElementById("play");

let span = { events: 0, first_ts: null, last_ts: null };
let at = { seq: 0, ts: null, folded: 0 }; // where the replay is
let model = null;
let view = null;
let ws = null; // the replay stream while playing
let seeking = 0; // the latest seek: an older one that answers late is dropped
let state = "loading";

const runPath = () => `/api/runs/${encodeURIComponent(run)}`;
const t0 = () => span.first_ts ?? 0;
const t1 = () => span.last_ts ?? 0;

function setState(s) {
  state = s;
  stateEl.dataset.state = s;
  stateEl.textContent = s;
  playBtn.textContent = s === "playing" ? "pause" : "play";
}

function showClock() {
  const now = at.ts ?? t0();
  setText(document.getElementById("replay-clock"),
    `${fmtDuration(now - t0())} of ${fmtDuration(t1() - t0())} · ${at.folded} / ${span.events} events`);
  document.getElementById("replay-pos").dataset.cursor = String(at.folded);
  if (!slider.matches(":active")) {
    const whole = t1() - t0();
    slider.value = String(whole > 0 ? Math.round(((now - t0()) / whole) * SLIDER_STEPS) : SLIDER_STEPS);
  }
}

/** Take one message of the daemon's (a replay step, or a position). */
function take(message) {
  model.applyState(message);
  if (message.events) model.applyEvents(message.events);
  at = { seq: message.seq, ts: message.ts, folded: message.folded };
  view.schedule();
  showClock();
}

function stop() {
  if (!ws) return;
  ws.onmessage = ws.onclose = null;
  ws.close();
  ws = null;
}

function play() {
  stop();
  const params = new URLSearchParams({ run, speed: speedSel.value, after: String(at.seq) });
  ws = new WebSocket(wsUrl("/api/replay", params));
  setState("playing");
  ws.onmessage = (msg) => {
    const message = JSON.parse(msg.data);
    take(message);
    if (message.end) {
      stop();
      setState("ended");
    }
  };
  ws.onclose = (ev) => {
    ws = null;
    setState(ev.code === 1000 ? "ended" : "paused");
  };
}

/** Show the run folded up to replay time `ts` (the whole run for null). */
async function seek(ts) {
  const mine = ++seeking;
  const wasPlaying = state === "playing";
  stop();
  const query = ts === null ? "" : `?ts=${ts}`;
  const position = await getJSON(`${runPath()}/state${query}`);
  const drawn = await readEvents({ run, kind: DRAWN_KINDS }, position.seq);
  if (mine !== seeking) return;
  span = position.span;
  model = new RunModel();
  view.setModel(model);
  model.applyEvents(drawn);
  take(position);
  const ended = at.folded >= span.events;
  if (wasPlaying && !ended) play();
  else setState(ended && at.folded > 0 ? "ended" : "paused");
}

async function start() {
  if (!run) {
    main.textContent = "No run given: open this page as replay.html?run=RUN.";
    return;
  }
  document.title = `vlmd · replay ${run}`;
  mountRunLayout(main);
  document.getElementById("csv-link").href = withToken(`${runPath()}/answers.csv`);
  const other = document.getElementById("other-link");
  other.href = `run.html?run=${encodeURIComponent(run)}`;
  other.textContent = "live view";
  showDatasetteLink(run);
  view = new RunView(run);
  setState("loading");
  const first = await getJSON(`${runPath()}/state?at=0`);
  if (!first) {
    main.textContent = `No run ${run} in the log.`;
    return;
  }
  span = first.span;
  model = new RunModel();
  view.setModel(model);
  take(first);
  setState("paused");
  playBtn.disabled = false;
  playBtn.addEventListener("click", () => {
    if (state === "playing") {
      stop();
      setState("paused");
    } else if (state === "ended") {
      seek(t0() - 1).then(play);
    } else play();
  });
  speedSel.addEventListener("change", () => { if (state === "playing") play(); });
  slider.addEventListener("input", () => {
    seek(t0() + ((t1() - t0()) * Number(slider.value)) / SLIDER_STEPS);
  });
  document.getElementById("to-end").addEventListener("click", () => seek(null));
  window.vlmd = { get model() { return model; }, view, seek, get at() { return at; } };
}

start();
