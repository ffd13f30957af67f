// The run page: one run's widgets, folded from the feed (`after=0&run=RUN`: the whole run, then live).

import { followFeed, showConnState, withToken } from "./feed.js";
import { showDatasetteLink } from "./links.js";
import { RunModel } from "./runmodel.js";
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
  const feed = followFeed({
    after: 0, run,
    onEvents(events) {
      for (const e of events) model.apply(e);
      view.schedule();
    },
  });
  window.vlmd = { model, view, feed };
}
