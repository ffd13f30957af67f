// The run page's accuracy by category (MMBench's table): one bar per category of the summary's
// `by_category` (or `by_l2_category`), sortable by name, accuracy or items. Every figure is the
// daemon's summary (items, accuracy, and for a circular file CircularEval's accuracy and its
// questions); nothing is counted here. Each bar's row carries its values as data attributes
// (data-category, -items, -accuracy, -circular-accuracy, -circular-groups).

import { fmtPct, h, setText } from "./util.js";

const collator = new Intl.Collator(undefined, { numeric: true });
// the order a first click on each key gives: names A to Z, best accuracy and most items first
const FIRST_DIR = { name: 1, accuracy: -1, items: -1 };

/** `rows` ([name, entry] pairs) sorted by `key` in `dir`; absent accuracies always last. */
export function sortCategories(rows, key, dir) {
  const byName = (a, b) => collator.compare(a[0], b[0]);
  return [...rows].sort((a, b) => {
    if (key === "name") return byName(a, b) * dir;
    const x = a[1][key];
    const y = b[1][key];
    if (x === null || x === undefined || y === null || y === undefined) {
      return (x === null || x === undefined) - (y === null || y === undefined) || byName(a, b);
    }
    return (x - y) * dir || byName(a, b);
  });
}

export class CategoryChart {
  /** The chart in `section` (RUN_LAYOUT's #categories). */
  constructor(section) {
    this.section = section;
    this.list = section.querySelector(".category-bars");
    this.levelSelect = section.querySelector(".category-level");
    this.sort = { key: "name", dir: 1 };
    this.summary = null;
    for (const button of section.querySelectorAll("button[data-sort]")) {
      button.addEventListener("click", () => {
        const key = button.dataset.sort;
        this.sort = { key, dir: this.sort.key === key ? -this.sort.dir : FIRST_DIR[key] };
        this.render();
      });
    }
    this.levelSelect.addEventListener("change", () => this.render());
  }

  /** Show `summary`'s tables (the daemon's run summary). */
  update(summary) {
    this.summary = summary;
    this.render();
  }

  render() {
    const s = this.summary ?? {};
    const levels = { category: s.by_category ?? {}, l2_category: s.by_l2_category ?? {} };
    const hasL2 = Object.keys(levels.l2_category).length > 0;
    this.section.hidden = Object.keys(levels.category).length === 0 && !hasL2;
    this.levelSelect.hidden = !hasL2;
    let level = this.levelSelect.value;
    if (!Object.keys(levels[level]).length) level = hasL2 ? "l2_category" : "category";
    const circular = (s.circular_groups ?? 0) > 0;
    const { key, dir } = this.sort;
    const rows = sortCategories(Object.entries(levels[level]), key, dir);
    this.list.dataset.level = level;
    this.list.dataset.sort = `${key} ${dir > 0 ? "asc" : "desc"}`;
    this.list.replaceChildren(...rows.map(([name, e]) => bar(name, e, circular)));
    for (const button of this.section.querySelectorAll("button[data-sort]")) {
      button.dataset.sorted = button.dataset.sort === key ? (dir > 0 ? "asc" : "desc") : "";
    }
    setText(this.section.querySelector(".category-note"), circular
      ? "bar: accuracy over items; line: CircularEval's accuracy, where a question counts only "
        + "when every rotation of it is right" : "");
  }
}

function bar(name, e, circular) {
  const pct = (v) => `${Math.max(0, Math.min(1, v ?? 0)) * 100}%`;
  const track = h("div", { class: "cat-track" }, h("div", { class: "cat-fill", style: `width: ${pct(e.accuracy)}` }));
  const figures = [h("span", { class: "cat-accuracy" }, fmtPct(e.accuracy)), " · ",
    h("span", { class: "cat-items" }, `${e.items} item${e.items === 1 ? "" : "s"}`)];
  if (circular) {
    track.append(h("div", { class: "cat-circular-mark", style: `left: ${pct(e.circular_accuracy)}` }));
    figures.push(" · circular ", h("span", { class: "cat-circular" }, fmtPct(e.circular_accuracy)),
      ` of ${e.circular_groups}`);
  }
  return h("li", {
    class: "cat-row",
    dataset: {
      category: name, items: e.items, accuracy: e.accuracy ?? "",
      circularAccuracy: circular ? (e.circular_accuracy ?? "") : "",
      circularGroups: circular ? e.circular_groups : "",
    },
  }, h("span", { class: "cat-name", title: name }, name), track, h("span", { class: "cat-figures" }, ...figures));
}
