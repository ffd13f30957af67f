"""What the watchdog adds to an item's event from what it measured while the request ran.

- ``energy_j``: NVML's energy counter on the model's GPUs, interpolated linearly between the
  samples around the request's start and end (the sampler's rate, 20 Hz by default; the counter
  itself may step more coarsely), for models in this agent's process tree (``hf:``,
  ``demo:``). ``energy_source`` is ``nvml``, or ``na`` where a GPU has no counter. A served
  model gets no per-item figure: its requests overlap and its GPUs are shared; the run's energy
  comes from the samples (``model_gpus``, folded by vlmd).
- ``kv_cache_peak``, ``server_running``, ``server_waiting``: the largest KV-cache usage and
  request counts the engine reported (`vlmd_agent.watch.server`) in the scrapes taken during
  the request and the last one before it.

An item's end is ``request_start + e2e_ms``. Its event waits (`CostQueue`) until the samples and
scrapes that cover that end exist, at most `HOLD_S`; status lines stay in their order.
"""

from __future__ import annotations

import socket
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from .sampler import Sample, Sampler
from .server import ServerMetrics

HOLD_S = 1.0  # the longest an item's event waits for the samples after its end
LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "[::1]", "0.0.0.0"})


def model_place(model: str) -> str:
    """Where the model runs, for energy: ``process`` (this agent's process tree), ``host``
    (a server at a local address) or ``remote``."""
    scheme, _, rest = model.partition(":")
    if scheme != "openai":
        return "process"
    url = rest[max(rest.rfind("@http://"), rest.rfind("@https://")) + 1:]
    host = url.split("://", 1)[-1].split("/", 1)[0].rsplit(":", 1)[0]
    local = LOCAL_HOSTS | {socket.gethostname(), socket.getfqdn()}
    return "host" if host in local or host.startswith("127.") else "remote"


def model_gpus(sample: Sample, place: str) -> list[int] | None:
    """The GPUs of `sample` that run the model: those holding memory of our process tree where
    NVML attributes it by pid (else every GPU), for a model in our processes; every GPU for a
    server on this host; None for a remote one."""
    if place == "remote":
        return None
    gpus = [g for g in sample["gpus"] if not g.get("lost") and g.get("index") is not None]
    if place == "process" and any(g.get("proc_mem_source") == "pid" for g in gpus):
        return [g["index"] for g in gpus if (g.get("proc_mem_mb") or 0) > 0]
    return [g["index"] for g in gpus]


def energy_between(samples: list[Sample], start: float, end: float,
                   devices: list[int]) -> float | str | None:
    """Joules the `devices` used from `start` to `end` by their counters in `samples`
    (interpolated); "na" if one has no counter; None if the samples do not cover it."""
    total = 0.0
    for index in devices:
        points = [(s["t"], g.get("energy_j")) for s in samples for g in s["gpus"]
                  if g.get("index") == index and not g.get("lost")]
        if not points:
            return None
        if any(v is None for _, v in points):
            return "na"
        a, b = _at(points, start), _at(points, end)
        if a is None or b is None:
            return None
        total += max(b - a, 0.0)
    return total


def _at(points: list[tuple[float, Any]], t: float) -> float | None:
    """The counter at `t`, linear between the samples around it (the nearest at an edge)."""
    before = [(pt, v) for pt, v in points if pt <= t]
    after = [(pt, v) for pt, v in points if pt >= t]
    if before and after:
        (t0, v0), (t1, v1) = before[-1], after[0]
        return float(v0) if t1 == t0 else float(v0) + (float(v1) - v0) * (t - t0) / (t1 - t0)
    if before or after:
        return float((before or after)[-1 if before else 0][1])
    return None


class Costs:
    """Measures an outcome's costs from the `sampler`'s ring and the `server`'s scrapes."""

    def __init__(self, sampler: Sampler, server: ServerMetrics | None, place: str) -> None:
        self.sampler, self.server, self.place = sampler, server, place

    @property
    def active(self) -> bool:
        """True when there is anything to add (events then wait for it)."""
        energy = self.place == "process" and self.sampler.gpus.kind == "nvml"
        return energy or (self.server is not None and self.server.active)

    def ready(self, outcome: Mapping[str, Any], now: float) -> bool:
        """True when the samples that cover the request's end exist, or waiting is over."""
        end = _end(outcome)
        if end is None or now - end > HOLD_S:
            return True
        if self.place == "process" and self.sampler.gpus.kind == "nvml":
            _, latest = self.sampler.window(end, end)
            if latest is None or latest < end:
                return False
        if self.server is not None and self.server.active:
            _, latest = self.server.window(end, end)
            if latest is None or latest < end:
                return False
        return True

    def add(self, outcome: dict[str, Any]) -> None:
        """Put the costs in ``outcome["metrics"]`` (a completed item's)."""
        end = _end(outcome)
        if end is None:
            return
        metrics = outcome["metrics"]
        start = metrics["request_start"]
        if self.place == "process" and self.sampler.gpus.kind == "nvml":
            samples, _ = self.sampler.window(start, end)
            devices = model_gpus(samples[0], self.place) if samples else None
            energy = energy_between(samples, start, end, devices) if devices else None
            if energy == "na":
                metrics["energy_source"] = "na"
            elif isinstance(energy, float):
                metrics["energy_j"], metrics["energy_source"] = round(energy, 6), "nvml"
        if self.server is not None and self.server.active:
            scrapes, _ = self.server.window(start, end)
            for field, name in (("kv_cache_usage", "kv_cache_peak"),
                                ("running", "server_running"), ("waiting", "server_waiting")):
                values = [s[field] for s in scrapes if s.get(field) is not None]
                if values:
                    peak = max(values)
                    metrics[name] = peak if field == "kv_cache_usage" else int(peak)


def _end(outcome: Mapping[str, Any]) -> float | None:
    metrics = outcome.get("metrics") or {}
    start, e2e = metrics.get("request_start"), metrics.get("e2e_ms")
    if outcome.get("kind") != "item.completed" or start is None or e2e is None:
        return None
    return float(start) + float(e2e) / 1000.0


class CostQueue:
    """The wrapper's status lines, each handed to `spool` in arrival order once its item's
    costs can be measured (`Costs.ready`), with the costs added."""

    def __init__(self, costs: Costs, spool: Callable[[Mapping[str, Any]], None]) -> None:
        self.costs, self.spool = costs, spool
        self._lines: deque[Mapping[str, Any]] = deque()

    def push(self, status: Mapping[str, Any]) -> None:
        """Queue a status line (spooled at once when nothing waits and nothing is measured)."""
        self._lines.append(status)
        self.release()

    def release(self, *, everything: bool = False) -> None:
        """Spool the lines that are ready, in order; `everything`: all of them, now."""
        now = time.time()
        active = self.costs.active
        while self._lines:
            status = self._lines[0]
            outcome = status.get("outcome") if status.get("state") == "item" else None
            if isinstance(outcome, dict) and active:
                if not everything and not self.costs.ready(outcome, now):
                    return
                self.costs.add(outcome)
            self.spool(self._lines.popleft())

    def __len__(self) -> int:
        return len(self._lines)
