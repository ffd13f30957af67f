"""A run's energy and KV-cache peak, folded from its watchdog samples, and how `vlmd report`
shows them beside accuracy."""

from __future__ import annotations

from typing import Any

import pytest

from tests.events import T0, completed, ev, finished, started, stored, submitted
from vlmd.cli.report import report_table
from vlmd.projections import summary, tracker


def fold(events: list[dict[str, Any]]) -> dict[str, Any]:
    folded = tracker.fold(stored(events))
    state = folded.runs["r"]
    return {**state.to_dict(), "summary": summary.summarize(state)}


def samples(host: str, t: float, joules: list[tuple[float | None, ...]], *, model: list[int],
            server: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A batch of samples 0.5 s apart, each with one energy counter per GPU."""
    batch = [{"t": t + 0.5 * k, "ram": {}, "gpus": [
        {"index": i, "energy_j": j} for i, j in enumerate(per_gpu)]}
        for k, per_gpu in enumerate(joules)]
    body: dict[str, Any] = {"host": host, "samples": batch, "model_gpus": model}
    if server is not None:
        body["server"] = server
    return ev("r", "watchdog.sample", body)


def test_the_runs_energy_is_its_model_gpus_rise_per_correct_answer() -> None:
    run = [submitted("r", total=4), {**started("r", total=4), "ts": T0 + 10},
           samples("h", T0 + 5, [(1000.0, 50.0)], model=[0]),  # before the start: not counted
           samples("h", T0 + 10, [(1100.0, 60.0), (1150.0, 61.0), (1250.0, 70.0)], model=[0]),
           completed("r", 1, score=1.0), completed("r", 2, score=1.0),
           completed("r", 3, score=0.0), completed("r", 4, score=0.5),
           samples("h", T0 + 11.5, [(1400.0, 80.0)], model=[0]),
           {**finished("r"), "ts": T0 + 11.5},
           samples("h", T0 + 12, [(1900.0, 90.0)], model=[0])]  # after the end: not counted
    row = fold(run)
    assert row["energy_j"] == pytest.approx(300.0)  # GPU 0 only, 1100 -> 1400
    assert row["energy_source"] == "nvml"
    assert row["joules_per_correct"] == pytest.approx(300.0 / 2.5)


def test_a_gpu_two_agents_sample_is_counted_once_and_a_reset_counter_starts_again() -> None:
    run = [submitted("r"), {**started("r"), "ts": T0}, started("r", shard="1/2"),
           samples("h", T0 + 1, [(100.0,), (110.0,)], model=[0]),
           samples("h", T0 + 1.25, [(105.0,), (115.0,)], model=[0]),  # a second agent
           samples("h", T0 + 2, [(5.0,), (25.0,)], model=[0]),  # the driver reloaded
           samples("other", T0 + 1, [(7.0,), (9.0,)], model=[0])]
    row = fold(run)
    assert row["energy_j"] == pytest.approx(15.0 + 20.0 + 2.0)
    assert row["joules_per_correct"] is None  # nothing answered yet


def test_a_model_gpu_without_a_counter_makes_the_run_na_and_no_model_gpu_none() -> None:
    na = fold([submitted("r"), {**started("r"), "ts": T0},
               samples("h", T0 + 1, [(100.0, None), (200.0, None)], model=[0, 1]),
               completed("r", 1)])
    assert (na["energy_source"], na["energy_j"], na["joules_per_correct"]) == ("na", None, None)
    remote = fold([submitted("r"), {**started("r"), "ts": T0},
                   ev("r", "watchdog.sample", {"host": "h", "samples": [
                       {"t": T0 + 1, "ram": {}, "gpus": [{"index": 0, "energy_j": 5.0}]}]})])
    assert (remote["energy_source"], remote["energy_j"]) == (None, None)


def test_the_kv_cache_peak_is_the_highest_the_engine_reported() -> None:
    scrapes = [{"t": T0 + 1, "engine": "vllm", "kv_cache_usage": 0.25, "running": 2},
               {"t": T0 + 1.2, "error": "HTTP 503"},
               {"t": T0 + 1.4, "engine": "vllm", "kv_cache_usage": 0.625, "running": 5}]
    row = fold([submitted("r"), {**started("r"), "ts": T0},
                samples("h", T0 + 1, [(1.0,)], model=[], server=scrapes)])
    assert row["kv_cache_peak"] == 0.625


def test_the_report_shows_joules_per_correct_answer_and_says_na() -> None:
    base = fold([submitted("r", name="measured"), {**started("r"), "ts": T0},
                 samples("h", T0 + 1, [(10.0,), (130.0,)], model=[0]), completed("r", 1),
                 samples("h", T0 + 2, [(140.0,)], model=[0], server=[
                     {"t": T0 + 2, "engine": "sglang", "kv_cache_usage": 0.5}])])
    na = {**base, "name": "no-counter", "energy_source": "na", "energy_j": None,
          "joules_per_correct": None, "kv_cache_peak": None}
    remote = {**base, "name": "remote", "energy_source": None, "energy_j": None,
              "joules_per_correct": None}
    lines = report_table([base, na, remote]).splitlines()
    assert lines[0].startswith("dataset ")  # one dataset: one table
    head = lines[1].split()
    assert head[-2:] == ["J_PER_CORRECT", "KV_PEAK"]
    assert lines[2].split()[-2:] == ["130.0", "50%"]
    assert lines[3].split()[-2:] == ["na", "-"]
    assert lines[4].split()[-2:] == ["-", "50%"]


def test_samples_logged_before_the_start_or_after_the_end_count_for_their_part_of_the_run() -> None:
    # the watchdog's batch reaches the log before the wrapper's run.started, and the last batch
    # after its run.finished: what lies in [start, end] by the samples' own times counts
    run = [submitted("r"),
           samples("h", T0 + 9, [(0.0,), (50.0,), (100.0,), (150.0,)], model=[0]),  # 9 .. 10.5
           {**started("r"), "ts": T0 + 10}, completed("r", 1),
           {**finished("r"), "ts": T0 + 11.25},
           samples("h", T0 + 11, [(200.0,), (250.0,), (300.0,)], model=[0])]  # 11 .. 12
    row = fold(run)
    assert row["energy_j"] == pytest.approx(100.0 * 1.25)  # 100 J/s from 10 to 11.25
