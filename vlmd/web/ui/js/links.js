// Links to Datasette, shown only when `/healthz` names its URL (hidden otherwise).

import { getJSON } from "./feed.js";

let health = null;

/** The daemon's `/healthz` (fetched once); {} when it cannot be read. */
export async function healthz() {
  if (!health) health = getJSON("/healthz").catch(() => ({}));
  return (await health) ?? {};
}

/** Point `#datasette-link` at Datasette (the run's events when `run` is given), or hide it. */
export async function showDatasetteLink(run) {
  const link = document.getElementById("datasette-link");
  if (!link) return;
  const base = (await healthz()).datasette_url;
  link.hidden = !base;
  if (!base) return;
  const root = base.replace(/\/$/, "");
  link.href = run ? `${root}/vlmd/events?run=${encodeURIComponent(run)}` : `${root}/vlmd`;
}
