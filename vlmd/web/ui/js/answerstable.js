// The run page's answers table: the daemon's item rows (answers.csv's columns, seq, outcome),
// filtered by outcome, sorted by any column, 100 a page. Each row shows a thumbnail of the
// item's image next to its id (`GET /api/runs/RUN/items/ITEM/image`, with the read token; a
// click opens the image below the row), its category, question and options (the option the
// answer was read as, and the expected one, marked). Each value's cell has data-key=COLUMN.

import { withToken } from "./feed.js";
import { fmt, h, setText } from "./util.js";

const collator = new Intl.Collator(undefined, { numeric: true });
const PAGE_ROWS = 100;
export const COLUMNS = [
  ["item", "item"], ["category", "category"], ["question", "question"], ["options", "options"],
  ["outcome", "outcome"], ["answer", "answer"], ["expected", "expected"],
  ["score", "score"], ["ttft_ms", "TTFT ms"], ["tpot_ms", "TPOT ms"], ["e2e_ms", "e2e ms"],
  ["input_tokens", "in tok"], ["output_tokens", "out tok"], ["vram_peak_delta_mb", "VRAM Δ MB"],
  ["error", "error"],
];
const NUMERIC = new Set(["score", "ttft_ms", "tpot_ms", "e2e_ms", "input_tokens", "output_tokens",
  "vram_peak_delta_mb"]);
const DIGITS = { score: 2, input_tokens: 0, output_tokens: 0 }; // counts are whole; others 1

/** A multiple-choice item's options as one line: "A. red · B. blue". */
export const optionsText = (options) =>
  Object.entries(options ?? {}).map(([letter, text]) => `${letter}. ${text}`).join(" · ");

/** An item row's value shown in the table (an expected answer may be a list of them). */
const shown = (r, k) => {
  if (k === "options") return optionsText(r.options);
  return Array.isArray(r[k]) ? r[k].join(" | ") : String(r[k] ?? "");
};

/** The options cell: each option, the one the answer was read as (`choice`) and the expected
 * one marked. Its text is `optionsText`. */
function optionsCell(r) {
  const parts = [];
  for (const [letter, text] of Object.entries(r.options ?? {})) {
    if (parts.length) parts.push(" · ");
    const cls = ["opt", letter === r.choice ? "chosen" : "", letter === r.expected ? "expected" : ""];
    parts.push(h("span", { class: cls.filter(Boolean).join(" "), dataset: { letter } }, `${letter}. ${text}`));
  }
  return h("td", { class: "options", dataset: { key: "options" } }, ...parts);
}

export class AnswersTable {
  /** The table of the run page; `run()` names the run whose images it shows. */
  constructor(run) {
    this.run = run;
    this.rows = new Map();
    this.sort = { key: "item", dir: 1 };
    this.filter = "all";
    this.page = 0;
    this.openImages = new Set();
    this.noImage = new Set(); // items whose image is not there: not asked for again
    this.shownSignature = null;
    document.getElementById("answer-filter").addEventListener("change", (e) => {
      this.filter = e.target.value;
      this.page = 0;
      this.render();
    });
    const head = document.querySelector("#answers-table thead tr");
    for (const [key, label] of COLUMNS) {
      head.append(h("th", {
        dataset: { key }, class: NUMERIC.has(key) ? "num sortable" : "sortable",
        onclick: () => {
          this.sort = { key, dir: this.sort.key === key ? -this.sort.dir : 1 };
          this.render();
        },
      }, label));
      if (key === "item") head.append(h("th", {}, "image")); // in sight, next to the item
    }
    document.getElementById("answers-prev").addEventListener("click", () => { this.page--; this.render(); });
    document.getElementById("answers-next").addEventListener("click", () => { this.page++; this.render(); });
  }

  /** Show `rows` (item -> item row), a new model's after a replay seek. */
  setRows(rows) {
    this.rows = rows;
    this.openImages.clear();
    this.shownSignature = null;
  }

  render() {
    const all = [...this.rows.values()];
    const rows = this.filter === "all" ? all : all.filter((r) => r.outcome === this.filter);
    const { key, dir } = this.sort;
    const val = (r) => (NUMERIC.has(key) ? r[key] : shown(r, key));
    const cmp = NUMERIC.has(key)
      ? (a, b) => ((val(a) ?? -Infinity) - (val(b) ?? -Infinity)) * dir
      : (a, b) => collator.compare(String(val(a)), String(val(b))) * dir;
    rows.sort(cmp);
    const pages = Math.max(1, Math.ceil(rows.length / PAGE_ROWS));
    this.page = Math.min(Math.max(this.page, 0), pages - 1);
    const page = rows.slice(this.page * PAGE_ROWS, (this.page + 1) * PAGE_ROWS);
    const table = document.getElementById("answers-table");
    table.dataset.rows = String(rows.length);
    setText(document.getElementById("answers-page"),
      `${rows.length} of ${all.length} items · page ${this.page + 1} of ${pages}`);
    document.getElementById("answers-prev").disabled = this.page === 0;
    document.getElementById("answers-next").disabled = this.page >= pages - 1;
    // Rebuild the rows only when what they show changed (a long run adds rows off this page).
    const signature = `${key}${dir}|${[...this.openImages]}|${page.map((r) => `${r.item}@${r.seq}`)}`;
    if (signature === this.shownSignature) return;
    this.shownSignature = signature;
    const out = [];
    for (const r of page) {
      const cells = COLUMNS.map(([k]) => (k === "options" ? optionsCell(r)
        : h("td", { class: NUMERIC.has(k) ? "num" : k, dataset: { key: k } },
          NUMERIC.has(k) ? fmt(r[k], DIGITS[k] ?? 1) : shown(r, k))));
      cells.splice(1, 0, h("td", { class: "image" }, this.thumbnail(r.item)));
      out.push(h("tr", { dataset: { item: r.item, outcome: r.outcome, seq: r.seq } }, ...cells));
      if (this.openImages.has(r.item)) out.push(this.imageRow(r.item));
    }
    document.querySelector("#answers-table tbody").replaceChildren(...out);
    for (const th of document.querySelectorAll("#answers-table th[data-key]")) {
      th.dataset.sorted = th.dataset.key === key ? (dir > 0 ? "asc" : "desc") : "";
    }
  }

  imageUrl(item) {
    return withToken(`/api/runs/${encodeURIComponent(this.run())}/items/${encodeURIComponent(item)}/image`);
  }

  /** The image cell's button: a thumbnail (loaded when scrolled to), or "none" once the image
   * turned out missing; a click opens the image below the row, or says why there is none. */
  thumbnail(item) {
    const button = h("button", { class: "show-image", title: "show the image", onclick: () => this.toggleImage(item) });
    if (this.noImage.has(item)) {
      button.append(h("span", { class: "image-missing" }, "none"));
      return button;
    }
    const img = h("img", { class: "thumb", loading: "lazy", src: this.imageUrl(item), alt: `item ${item}` });
    img.addEventListener("error", () => {
      this.noImage.add(item);
      img.replaceWith(h("span", { class: "image-missing" }, "none"));
    });
    button.append(img);
    return button;
  }

  toggleImage(item) {
    if (this.openImages.has(item)) this.openImages.delete(item);
    else this.openImages.add(item);
    this.render();
  }

  imageRow(item) {
    const cell = h("td", { colspan: COLUMNS.length + 1, class: "image-cell" });
    const img = h("img", { src: this.imageUrl(item), alt: `item ${item}` });
    img.addEventListener("error", () => cell.replaceChildren(h("span", { class: "image-missing" }, "image not available")));
    cell.append(img);
    return h("tr", { class: "image-row", dataset: { imageFor: item } }, cell);
  }
}
