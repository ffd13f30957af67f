"""What a run cost beside its answers, folded from its watchdog samples: the energy of the GPUs
that run the model, and the serving engine's KV-cache peak.

- ``energy_j``: the rise of NVML's energy counter on the GPUs the agents name as the model's
  (``model_gpus``: those of an in-process model, or every GPU of the host of a local server),
  from the first sample after the run started until it ends. Each GPU (host, index) is counted
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


@dataclass
class RunCosts:
    """One run's energy and KV-cache peak so far (a fold: `apply` each sample body)."""

    energy_j: float = 0.0
    energy_na: bool = False
    energy_seen: bool = False  # some model GPU's counter rose between two samples
    kv_cache_peak: float | None = None
    last: dict[tuple[str, int], tuple[float, float]] = field(default_factory=dict)

    def apply(self, body: dict[str, Any], started_at: float | None) -> None:
        """Fold one ``watchdog.sample`` body of the run (while it runs, from `started_at`)."""
        for scrape in body.get("server") or ():
            usage = scrape.get("kv_cache_usage") if isinstance(scrape, dict) else None
            if isinstance(usage, int | float) and (self.kv_cache_peak is None
                                                  or usage > self.kv_cache_peak):
                self.kv_cache_peak = float(usage)
        gpus = body.get("model_gpus")
        if not isinstance(gpus, list) or started_at is None:
            return
        wanted, host = set(gpus), str(body.get("host"))
        for sample in samples_of(body):
            t = sample.get("t")
            if not isinstance(t, int | float) or t < started_at:
                continue
            for gpu in sample.get("gpus") or ():
                if not isinstance(gpu, dict) or gpu.get("index") not in wanted or gpu.get("lost"):
                    continue
                value = gpu.get("energy_j")
                if not isinstance(value, int | float):
                    self.energy_na = True
                    continue
                key = (host, gpu["index"])
                before = self.last.get(key)
                if before is not None and t <= before[0]:
                    continue  # another agent's older sample of the same GPU
                if before is not None and value >= before[1]:
                    self.energy_j += value - before[1]
                    self.energy_seen = True
                self.last[key] = (t, value)

    def row(self, score_sum: float) -> dict[str, Any]:
        """The run row's cost fields (`vlmd.projections.tracker.RunState.to_dict`)."""
        source = "na" if self.energy_na else "nvml" if self.energy_seen else None
        energy = self.energy_j if source == "nvml" else None
        per_correct = energy / score_sum if energy is not None and score_sum > 0 else None
        return {"energy_j": energy, "energy_source": source, "joules_per_correct": per_correct,
                "kv_cache_peak": self.kv_cache_peak}
