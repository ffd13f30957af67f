// The run page: one run's widgets. Its state (the run's row, its item rows, its summary) comes
// from the daemon's fold (`WS /api/state?run=RUN`); the charts and the alert list draw its
// samples and alerts from the feed (`WS /api/feed?run=RUN&kind=...`).

import { followFeed, followState, showConnState, withToken } from "./feed.js";
import { showDatasetteLink } from "./links.js";
import { DRAWN_KINDS, RunModel } from "./runmodel.js";
import { RunView, mountRunLayout } from "./runview.js";
import { param } from "./util.js";

const run = param("run");
const main = document.querySelector("main");
if (!run) {
  main.textContent = "No run given: open this page as run.html?run=RUN (see the runs page).";
  showConnState("—");
} else {
  document.title = `vlmd · ${run}`;
  mountRunLayout(main);
  document.getElementById("csv-link").href = withToken(`/api/runs/${encodeURIComponent(run)}/answers.csv`);
  const other = document.getElementById("other-link");
  other.href = `replay.html?run=${encodeURIComponent(run)}`;
  other.textContent = "replay";
  showDatasetteLink(run);
  const view = new RunView(run);
  const model = new RunModel();
  view.setModel(model);
  const state = followState({
    run,
    onState(message) {
      model.applyState(message);
      view.schedule();
    },
  });
  const feed = followFeed({
    after: 0, run, kinds: DRAWN_KINDS,
    onEvents(events) {
      model.applyEvents(events);
      view.schedule();
    },
  });
  window.vlmd = { model, view, state, feed };
}
