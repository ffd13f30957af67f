// The diff page (diff.html?a=RUN&b=RUN[&force=1]): the items that changed between two runs, as
// `GET /api/diff` lists them (vlmd/projections/diff.py, the rule `vlmd diff` prints), each with
// its image, question, options, expected answer and both runs' answers and scores.

import { readToken, withToken } from "./feed.js";
import { fmt, fmtPct, h, param } from "./util.js";

const LIMIT = 1000; // items drawn at most; the counts are of all of them
const LABELS = { up: "up", down: "down", only_a: "A only", only_b: "B only", unscored: "unscored" };

const filter = document.getElementById("change");
let found = null; // GET /api/diff

/** GET `url` as JSON: {ok, status, body}, the body being vlmd's {error} when refused. */
async function ask(url) {
  const headers = { accept: "application/json" };
  const token = readToken();
  if (token) headers.authorization = `Bearer ${token}`;
  const r = await fetch(url, { headers });
  let body = null;
  try {
    body = await r.json();
  } catch {
    body = { error: `HTTP ${r.status}` };
  }
  return { ok: r.ok, status: r.status, body };
}

function showError(status, message) {
  const el = document.getElementById("diff-error");
  el.hidden = false;
  el.replaceChildren(message);
  if (status === 409 && param("force") !== "1") {
    const q = new URLSearchParams(location.search);
    q.set("force", "1");
    el.append(" ", h("a", { id: "force-link", href: `diff.html?${q}` }, "compare them anyway"));
  }
}

function runFigures(which, ref) {
  return [h("dt", {}, `run ${which}`),
    h("dd", { id: `run-${which.toLowerCase()}` },
      h("a", { href: `run.html?run=${encodeURIComponent(ref.run)}` }, ref.name ?? ref.run),
      ` · ${ref.model ?? "—"} · ${ref.done}/${ref.total ?? "?"} answered · accuracy ${fmtPct(ref.accuracy)}`)];
}

function image(item) {
  const runs = [found.a.run, found.b.run];
  const src = (run) => withToken(`/api/runs/${encodeURIComponent(run)}/items/${encodeURIComponent(item)}/image`);
  const img = h("img", { class: "thumb", loading: "lazy", alt: `item ${item}`, src: src(runs[0]) });
  let tried = 0;
  img.addEventListener("error", () => {
    tried += 1;
    if (tried < runs.length) img.src = src(runs[tried]); // B's dataset, if A's is gone
    else img.replaceWith(h("span", { class: "image-missing" }, "no image"));
  });
  return img;
}

function side(s) {
  if (s === null) return [h("td", { class: "answer missing" }, "not run"), h("td", { class: "num" }, "—")];
  if (s.error !== null) return [h("td", { class: "answer error" }, `failed: ${s.error}`), h("td", { class: "num" }, "—")];
  return [h("td", { class: "answer" }, s.answer ?? ""), h("td", { class: "num score" }, fmt(s.score, 2))];
}

function row(it) {
  const options = Object.entries(it.options ?? {}).map(([k, v]) => `${k}. ${v}`).join("  ·  ");
  const expected = Array.isArray(it.expected) ? it.expected.join(" | ") : it.expected ?? "—";
  return h("tr", { dataset: { item: it.item, change: it.change } },
    h("td", { class: "image" }, image(it.item)),
    h("td", {}, it.item),
    h("td", { class: "question" }, it.question ?? "—", options ? h("div", { class: "options" }, options) : null),
    h("td", { class: "expected" }, expected),
    ...side(it.a), ...side(it.b),
    h("td", { class: `change ch-${it.change}` }, LABELS[it.change] ?? it.change));
}

function render() {
  const wanted = filter.value;
  const items = found.items.filter((it) => !wanted || it.change === wanted);
  document.querySelector("#diff-table tbody").replaceChildren(...items.map(row));
}

async function main() {
  const a = param("a"), b = param("b");
  if (!a || !b) {
    showError(400, "name two runs: diff.html?a=RUN&b=RUN (the compare page links here)");
    return;
  }
  const q = new URLSearchParams({ a, b, limit: String(LIMIT) });
  if (param("force") === "1") q.set("force", "1");
  const r = await ask(`/api/diff?${q}`);
  if (!r.ok) {
    showError(r.status, r.body.error ?? `HTTP ${r.status}`);
    return;
  }
  found = r.body;
  const c = found.counts;
  document.getElementById("diff-runs").replaceChildren(...runFigures("A", found.a), ...runFigures("B", found.b));
  const sha = found.a.dataset_sha256;
  document.getElementById("diff-dataset").textContent = `dataset ${found.a.dataset ?? "—"} · `
    + (sha ? `sha256 ${sha}` : "content not recorded")
    + (found.same_dataset ? "" : ` · B's: ${found.b.dataset ?? "—"} (another dataset: compared by force)`);
  document.getElementById("diff-counts").textContent = `${c.compared} items compared, ${c.changed} changed: `
    + `${c.up} up, ${c.down} down, ${c.only_a} answered by A only, ${c.only_b} by B only, ${c.unscored} unscored`;
  if (found.truncated) {
    const note = document.getElementById("diff-truncated");
    note.hidden = false;
    note.textContent = `the first ${found.items.length} of ${c.changed} changed items are shown; vlmd diff lists them all`;
  }
  filter.addEventListener("change", render);
  render();
  window.vlmd = { found };
}

main();
