// Time series for the charts, and decimation that keeps peaks.
//
// A Series holds one time axis and any number of named value columns (null where a sample lacks
// that column). What the chart draws is capped at about 2 * MAX_BUCKETS points: the points are
// split into buckets and each bucket keeps its minimum and maximum of every column, in the order
// they occurred, so a one-sample VRAM spike still shows. Storage itself is compacted the same way
// past MAX_STORED points, so a week-long run costs bounded memory.

export const MAX_BUCKETS = 600;
export const MAX_STORED = 200_000;

/**
 * Min/max decimation of columns sharing the axis `t` into at most 2 * buckets points.
 * Returns [t, ...columns] in the shape uPlot takes.
 */
export function decimate(t, columns, buckets = MAX_BUCKETS) {
  const n = t.length;
  if (n <= 2 * buckets) return [t, ...columns];
  const outT = [];
  const outCols = columns.map(() => []);
  for (let b = 0; b < buckets; b++) {
    const lo = Math.floor((b * n) / buckets);
    const hi = Math.floor(((b + 1) * n) / buckets);
    if (hi <= lo) continue;
    outT.push(t[lo], t[Math.floor((lo + hi - 1) / 2)]);
    columns.forEach((col, c) => {
      let min = null, max = null, iMin = -1, iMax = -1;
      for (let i = lo; i < hi; i++) {
        const v = col[i];
        if (v === null || v === undefined) continue;
        if (min === null || v < min) { min = v; iMin = i; }
        if (max === null || v > max) { max = v; iMax = i; }
      }
      if (iMin <= iMax) outCols[c].push(min, max);
      else outCols[c].push(max, min);
    });
  }
  return [outT, ...outCols];
}

export class Series {
  constructor() {
    this.t = [];
    this.names = [];
    this.cols = [];
    this.count = 0; // samples pushed in all (storage may hold fewer after compaction)
    this.version = 0;
  }

  /** Add one sample at time `t` (seconds) with values {name: number}. */
  push(t, values) {
    for (const name of Object.keys(values)) {
      if (!this.names.includes(name)) {
        this.names.push(name);
        this.cols.push(new Array(this.t.length).fill(null));
      }
    }
    // Samples from several hosts can interleave slightly out of order: keep the axis sorted.
    let at = this.t.length;
    while (at > 0 && this.t[at - 1] > t) at--;
    this.t.splice(at, 0, t);
    this.names.forEach((name, c) => this.cols[c].splice(at, 0, values[name] ?? null));
    this.count += 1;
    this.version += 1;
    if (this.t.length > MAX_STORED) this.compact();
  }

  compact() {
    const [t, ...cols] = decimate(this.t, this.cols, MAX_STORED / 4);
    this.t = t;
    this.cols = cols;
  }

  /** What the chart draws: [t, ...columns], decimated to at most 2 * buckets points. */
  view(buckets = MAX_BUCKETS) {
    return decimate(this.t, this.cols, buckets);
  }
}
