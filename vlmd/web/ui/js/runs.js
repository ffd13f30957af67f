// The runs page: every run's headline figures, as the daemon's fold serves them.
//
// `WS /api/state` sends every run's row first, then the rows of the runs each commit changed;
// the page upserts them and paints at the next animation frame. Statuses, counts, accuracy,
// rate and ETA are the daemon's: nothing here derives them from events.

import { followState } from "./feed.js";
import { runTableRow, updateRunFields } from "./runrow.js";
import { frameScheduler } from "./util.js";
import { showDatasetteLink } from "./links.js";

const tbody = document.querySelector("#runs tbody");
const runs = new Map(); // run id -> its latest row
const rows = new Map(); // run id -> <tr>
const dirty = new Set();
let synced = false;

function render() {
  const changed = [...dirty].map((run) => runs.get(run));
  dirty.clear();
  // new runs go on top, the newest first
  changed.sort((a, b) => (a.submitted_at ?? 0) - (b.submitted_at ?? 0));
  for (const row of changed) paint(row);
  document.getElementById("no-runs").hidden = !synced || rows.size > 0;
}

function paint(row) {
  const tr = rows.get(row.run);
  if (tr) {
    updateRunFields(tr, row);
    return;
  }
  const fresh = runTableRow(row);
  rows.set(row.run, fresh);
  tbody.prepend(fresh);
}

const schedule = frameScheduler(render);

function onState(message) {
  for (const row of message.runs) {
    runs.set(row.run, row);
    dirty.add(row.run);
  }
  synced = true;
  schedule();
}

showDatasetteLink(null);
window.vlmd = { runs, feed: followState({ onState }) };
