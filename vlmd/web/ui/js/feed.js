// The daemon's streams, reconnected by themselves from the last seq seen:
// `WS /api/feed?after=SEQ[&run=RUN][&kind=K...]` (committed events, for charts and alert lists)
// and `WS /api/state?after=SEQ[&run=RUN]` (the fold's state: run rows, item rows, summary).
//
// The daemon closes with 1013 when a client is too slow and 1001 when it stops; any close or
// failed connect is retried with exponential backoff (capped at BACKOFF_MAX_MS), resuming after
// the last seq seen, so nothing is missed or seen twice. The connection state is shown in the
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

/** A WebSocket URL for `path` with `params` (and the read token). */
export function wsUrl(path, params) {
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  const token = readToken();
  if (token) params.set("token", token);
  return `${proto}//${location.host}${path}?${params}`;
}

/**
 * Follow `path` from seq `after`, reconnecting after the last seq seen. `onMessage(data, last)`
 * gets each parsed message and returns the seq it brings the reader to (null: none).
 */
function follow(path, { after, query, onMessage }) {
  let last = after;
  let ws = null;
  let delay = BACKOFF_MIN_MS;
  let stopped = false;
  let timer = null;

  function connect() {
    const params = new URLSearchParams(query);
    params.set("after", String(last));
    ws = new WebSocket(wsUrl(path, params));
    ws.onopen = () => {
      delay = BACKOFF_MIN_MS;
      showConnState("live");
    };
    ws.onmessage = (msg) => {
      const seq = onMessage(JSON.parse(msg.data), last);
      if (seq !== null && seq !== undefined) last = seq;
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

/**
 * Follow the feed from `after`; `onEvents(events)` gets every event once, in seq order; with
 * `kinds` (exact kinds or `prefix.*`), only events of those kinds are sent at all.
 * Returns {last, close()}.
 */
export function followFeed({ after = 0, run = null, kinds = null, onEvents }) {
  const query = [];
  if (run) query.push(["run", run]);
  for (const kind of kinds ?? []) query.push(["kind", kind]);
  return follow("/api/feed", {
    after, query,
    onMessage(events, last) {
      const fresh = events.filter((e) => e.seq > last);
      if (!fresh.length) return null;
      onEvents(fresh);
      return fresh[fresh.length - 1].seq;
    },
  });
}

/**
 * Follow the fold's state (every run's rows, or with `run` that run's rows, item rows and
 * summary) from `after`; `onState(message)` gets each message ({seq, runs, items?, summary?})
 * to upsert. Returns {last, close()}.
 */
export function followState({ after = 0, run = null, onState }) {
  return follow("/api/state", {
    after, query: run ? [["run", run]] : [],
    onMessage(message) {
      onState(message);
      return message.seq;
    },
  });
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
