// The live feed: `WS /api/feed?after=SEQ[&run=RUN][&kind=K...]`, reconnected by itself with the
// last seq seen.
//
// The daemon closes with 1013 when this client is too slow and 1001 when it stops; any close or
// failed connect is retried with exponential backoff (capped at BACKOFF_MAX_MS), resuming after
// the last seq folded, so nothing is missed or seen twice. The connection state is shown in the
// element `#conn-status` (data-state: connecting, live, reconnecting).

const BACKOFF_MIN_MS = 100;
const BACKOFF_MAX_MS = 2000;

const LABELS = { connecting: "connecting…", live: "live", reconnecting: "reconnecting…" };

/** Show the connection state in `#conn-status`. */
export function showConnState(state, detail = "") {
  const el = document.getElementById("conn-status");
  if (!el) return;
  el.dataset.state = state;
  el.textContent = LABELS[state] ?? state;
  el.title = detail;
}

/**
 * Follow the feed from `after`; `onEvents(events)` gets every event once, in seq order; with
 * `kinds` (exact kinds or `prefix.*`), only events of those kinds are sent at all.
 * Returns {close()}.
 */
/** The read token when vlmd asks for one (`[server] read_token`): open a page once with
 * `?token=...`; it is kept in this browser's localStorage for the other pages. */
export function readToken() {
  const given = new URLSearchParams(location.search).get("token");
  if (given) localStorage.setItem("vlmd-token", given);
  return given || localStorage.getItem("vlmd-token");
}

/** `url` with the read token as a query parameter, for links and images (no headers there). */
export function withToken(url) {
  const token = readToken();
  return token ? `${url}${url.includes("?") ? "&" : "?"}token=${encodeURIComponent(token)}` : url;
}

export function followFeed({ after = 0, run = null, kinds = null, onEvents }) {
  let last = after;
  let ws = null;
  let delay = BACKOFF_MIN_MS;
  let stopped = false;
  let timer = null;

  function connect() {
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    const params = new URLSearchParams({ after: String(last) });
    if (run) params.set("run", run);
    for (const kind of kinds ?? []) params.append("kind", kind);
    const token = readToken();
    if (token) params.set("token", token);
    ws = new WebSocket(`${proto}//${location.host}/api/feed?${params}`);
    ws.onopen = () => {
      delay = BACKOFF_MIN_MS;
      showConnState("live");
    };
    ws.onmessage = (msg) => {
      const events = JSON.parse(msg.data);
      const fresh = events.filter((e) => e.seq > last);
      if (!fresh.length) return;
      last = fresh[fresh.length - 1].seq;
      onEvents(fresh);
    };
    ws.onclose = (ev) => {
      ws = null;
      if (stopped) return;
      showConnState("reconnecting", `closed ${ev.code} ${ev.reason}; resuming after ${last}`);
      timer = setTimeout(connect, ev.code === 1013 ? BACKOFF_MIN_MS : delay);
      delay = Math.min(delay * 2, BACKOFF_MAX_MS);
    };
  }

  showConnState("connecting");
  connect();
  return {
    get last() { return last; },
    close() {
      stopped = true;
      clearTimeout(timer);
      if (ws) ws.close();
    },
  };
}

/** GET a JSON document; null on 404. */
export async function getJSON(url) {
  const headers = { accept: "application/json" };
  const token = readToken();
  if (token) headers.authorization = `Bearer ${token}`;
  const r = await fetch(url, { headers });
  if (r.status === 404) return null;
  if (!r.ok) throw new Error(`${url}: HTTP ${r.status}`);
  return r.json();
}

/** Every event matching `params` (an object for /api/events) up to seq `until`, paged. */
export async function readEvents(params, until = Infinity, pageSize = 10000) {
  const out = [];
  let after = 0;
  for (;;) {
    const q = new URLSearchParams({ after: String(after), limit: String(pageSize) });
    for (const [k, v] of Object.entries(params)) {
      for (const one of [].concat(v)) q.append(k, one);
    }
    const page = await getJSON(`/api/events?${q}`);
    for (const e of page) if (e.seq <= until) out.push(e);
    if (page.length < pageSize || page[page.length - 1].seq >= until) return out;
    after = page[page.length - 1].seq;
  }
}
