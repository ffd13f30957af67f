"""What a run cost beside its answers, folded from its watchdog samples: the energy of the GPUs
that run the model, and the serving engine's KV-cache peak.

- ``energy_j``: the rise of NVML's energy counter on the GPUs the agents name as the model's
  (``model_gpus``: those of an in-process model, or every GPU of the host of a local server),
  over the time from the run's start to its end, by the samples' own times (the share of each
  interval between two samples that lies within the run; a batch logged before the start or
  after the end still counts for its part). Each GPU (host, index) is counted
  once however many agents sample it, over its samples in time order; a counter that goes back
  (a driver reload) starts again. ``energy_source`` is ``nvml``, or ``na`` when such a GPU has
  no counter, or None when no model GPU was sampled (a remote server, no NVML).
- ``joules_per_correct``: ``energy_j`` over the sum of the completed items' scores (the number
  of correct answers where scores are 0 or 1): the run's cost per correct answer.
- ``kv_cache_peak``: the highest KV-cache usage (0..1) the engine reported while the run ran.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vlmd.projections.gpus import samples_of
from vlmd_agent.catalog import WatchdogSample

EARLY_KEEP = 8  # sample events kept while the run's start is not yet in the log


@dataclass
class RunCosts:
    """One run's energy and KV-cache peak so far (a fold: `apply` each sample body)."""

    energy_j: float = 0.0
    energy_na: bool = False
    energy_seen: bool = False  # some model GPU's counter rose between two samples
    kv_cache_peak: float | None = None
    last: dict[tuple[str, int], tuple[float, float]] = field(default_factory=dict)
    early: list[WatchdogSample] = field(default_factory=list)

    def apply(self, body: WatchdogSample, started_at: float | None,
              ended_at: float | None = None) -> None:
        """Fold one ``watchdog.sample`` body of the run: the energy its samples show between
        `started_at` and `ended_at` (None: the run has not ended). A body logged before the
        run's start (agents send samples and items through different outboxes) waits for it."""
        for scrape in body.server or ():
            if not isinstance(scrape, dict) or (ended_at is not None
                                                and (scrape.get("t") or 0) > ended_at):
                continue
            usage = scrape.get("kv_cache_usage")
            if isinstance(usage, int | float) and (self.kv_cache_peak is None
                                                  or usage > self.kv_cache_peak):
                self.kv_cache_peak = float(usage)
        if body.model_gpus is None:
            return
        if started_at is None:
            self.early = [*self.early, body][-EARLY_KEEP:]
            return
        early, self.early = self.early, []
        for b in [*early, body]:
            self._energy(b, started_at, ended_at)

    def _energy(self, body: WatchdogSample, start: float, end: float | None) -> None:
        """Each model GPU's counter rise between its consecutive samples, the share of each
        interval that lies within [start, end] (linear in time)."""
        wanted, host = set(body.model_gpus or ()), body.host
        for sample in samples_of(body):
            t = sample.t
            if t is None:
                continue
            for gpu in sample.gpus:
                if not isinstance(gpu, dict) or gpu.get("index") not in wanted or gpu.get("lost"):
                    continue
                value = gpu.get("energy_j")
                if not isinstance(value, int | float):
                    if start <= t and (end is None or t <= end):
                        self.energy_na = True
                    continue
                key = (host, gpu["index"])
                before = self.last.get(key)
                if before is not None and t <= before[0]:
                    continue  # another agent's older sample of the same GPU
                if before is not None and value >= before[1]:  # else the counter was reset
                    t0, v0 = before
                    lo, hi = max(t0, start), t if end is None else min(t, end)
                    if hi > lo:
                        self.energy_j += (value - v0) * (hi - lo) / (t - t0)
                        self.energy_seen = True
                self.last[key] = (t, value)

    def row(self, score_sum: float) -> dict[str, Any]:
        """The run row's cost fields (`vlmd.projections.tracker.RunState.to_dict`)."""
        source = "na" if self.energy_na else "nvml" if self.energy_seen else None
        energy = self.energy_j if source == "nvml" else None
        per_correct = energy / score_sum if energy is not None and score_sum > 0 else None
        return {"energy_j": energy, "energy_source": source, "joules_per_correct": per_correct,
                "kv_cache_peak": self.kv_cache_peak}
