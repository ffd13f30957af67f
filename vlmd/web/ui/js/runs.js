// The runs page: every run's headline figures, kept current by folding the live feed.
//
// Start-up: `GET /api/runs` paints at once and gives the head seq; the log's run/item/alert/
// heartbeat events up to that head are then folded (samples are skipped: the tracker ignores
// them), and the feed is followed from the head for the same kinds, so vlmd does not even send
// the samples. From then on only the feed moves the page.

import { followFeed, getJSON, readEvents } from "./feed.js";
import { runTableRow, updateRunFields } from "./runrow.js";
import { Tracker, apply } from "./tracker.js";
import { frameScheduler } from "./util.js";
import { showDatasetteLink } from "./links.js";

const TRACKED_KINDS = ["run.*", "item.*", "alert.*", "watchdog.heartbeat"];

const tbody = document.querySelector("#runs tbody");
const rows = new Map(); // run id -> <tr>
const dirty = new Set();
let tracker = null;

function render() {
  const states = tracker ? [...dirty].map((r) => tracker.runs.get(r).toDict()) : [];
  dirty.clear();
  for (const row of states) paint(row);
  document.getElementById("no-runs").hidden = rows.size > 0;
}

function paint(row) {
  const tr = rows.get(row.run);
  if (tr) {
    updateRunFields(tr, row);
    return;
  }
  const fresh = runTableRow(row);
  rows.set(row.run, fresh);
  tbody.prepend(fresh); // newest first
}

const schedule = frameScheduler(render);

function onEvents(events) {
  for (const e of events) dirty.add(apply(tracker, e).run);
  schedule();
}

async function main() {
  showDatasetteLink(null);
  const snapshot = await getJSON("/api/runs");
  const sorted = snapshot.runs.sort((a, b) => (a.submitted_at ?? 0) - (b.submitted_at ?? 0));
  for (const row of sorted) paint(row);
  document.getElementById("no-runs").hidden = rows.size > 0;
  const head = snapshot.last_seq;
  tracker = new Tracker();
  for (const e of await readEvents({ kind: TRACKED_KINDS }, head)) apply(tracker, e);
  tracker.last_seq = head;
  for (const run of tracker.runs.keys()) dirty.add(run);
  render();
  window.vlmd = { tracker, feed: followFeed({ after: head, kinds: TRACKED_KINDS, onEvents }) };
}

main();
