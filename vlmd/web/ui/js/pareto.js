// The Pareto front of runs on (accuracy, cost): higher accuracy is better; lower cost is better
// unless `higherIsBetter` (items/s).

/**
 * The set of indexes of `points` ({acc, cost}) that no other point dominates. A point dominates
 * another when it is at least as good on both axes and strictly better on one; equal points are
 * all on the front.
 */
export function paretoFront(points, higherIsBetter = false) {
  const better = (a, b) => (higherIsBetter ? a > b : a < b);
  const front = new Set();
  points.forEach((p, i) => {
    const dominated = points.some((q, j) => j !== i
      && q.acc >= p.acc && (q.cost === p.cost || better(q.cost, p.cost))
      && (q.acc > p.acc || better(q.cost, p.cost)));
    if (!dominated) front.add(i);
  });
  return front;
}
