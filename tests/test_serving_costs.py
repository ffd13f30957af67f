"""What the watchdog adds to items from beside the model: the serving engine's KV cache (its
Prometheus /metrics, from `tests/serving_server.py` speaking vLLM's and SGLang's families) and
the GPU energy (NVML's counter, from `tests/fake_pynvml.py`)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests import fake_pynvml
from tests.conftest import TOKEN
from tests.serving_server import metrics_text
from tests.test_backend_serving import serving
from vlmd.daemon.serve import Daemon
from vlmd_agent.evaluate import demo_data
from vlmd_agent.outbox.spool import Outbox
from vlmd_agent.pipe import WrapperConfig, open_outbox
from vlmd_agent.watch.gpu import open_gpus
from vlmd_agent.watch.itemcost import energy_between, model_place
from vlmd_agent.watch.sampler import Sampler
from vlmd_agent.watch.server import metrics_url_of, scrape_of
from vlmd_agent.watch.watchdog import Watchdog, WatchdogConfig

HEADERS = {"authorization": f"Bearer {TOKEN}"}

VLLM_V0 = """# HELP vllm:gpu_cache_usage_perc GPU KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{model_name="Qwen/Qwen2-VL-7B"} 0.25
vllm:num_requests_running{model_name="Qwen/Qwen2-VL-7B"} 3.0
vllm:num_requests_waiting{model_name="Qwen/Qwen2-VL-7B"} 1.0
vllm:time_to_first_token_seconds_bucket{le="0.1",model_name="Qwen/Qwen2-VL-7B"} 4.0
"""


def text_of(engine: str, running: int, waiting: int, kv_per_request: float) -> str:
    text = metrics_text(engine, running, waiting, kv_per_request)
    assert text is not None
    return text


def test_vllm_v1_and_v0_and_sglang_expositions_are_read() -> None:
    v1 = scrape_of(text_of("vllm", running=3, waiting=2, kv_per_request=0.1), 5.0)
    assert v1 == {"t": 5.0, "engine": "vllm", "kv_cache_usage": pytest.approx(0.3),
                  "running": 3.0, "waiting": 2.0}
    v0 = scrape_of(VLLM_V0, 6.0)
    assert v0 == {"t": 6.0, "engine": "vllm", "kv_cache_usage": 0.25, "running": 3.0,
                  "waiting": 1.0}
    sglang = scrape_of(text_of("sglang", running=4, waiting=0, kv_per_request=0.2), 7.0)
    assert sglang == {"t": 7.0, "engine": "sglang", "kv_cache_usage": pytest.approx(0.8),
                      "running": 4.0, "waiting": 0.0}


def test_an_exposition_without_engine_families_is_none_and_ranks_add_up() -> None:
    assert scrape_of("# TYPE x gauge\nprocess_cpu_seconds_total 12.5\n", 1.0) is None
    two = ('vllm:num_requests_running{engine="0"} 2\nvllm:num_requests_running{engine="1"} 3\n'
           'vllm:kv_cache_usage_perc{engine="0"} 0.5\nvllm:kv_cache_usage_perc{engine="1"} 0.7 '
           '1700000000\n')
    scrape = scrape_of(two, 1.0)
    assert scrape is not None
    assert (scrape["running"], scrape["kv_cache_usage"], scrape["waiting"]) == (5.0, 0.7, None)


def test_where_metrics_and_the_model_are_found() -> None:
    assert metrics_url_of("openai:m@http://gpu-7:8000/v1") == "http://gpu-7:8000/metrics"
    assert metrics_url_of("openai:org/m@rev@https://h/serve/") == "https://h/serve/metrics"
    assert metrics_url_of("hf:/models/x") is None
    assert model_place("hf:/models/x") == model_place("demo:tiny") == "process"
    assert model_place("openai:m@http://127.0.0.1:8000/v1") == "host"
    assert model_place("openai:m@http://localhost:8000") == "host"
    assert model_place("openai:m@https://api.example.com/v1") == "remote"


def _sample(t: float, *energies: float | None) -> dict[str, Any]:
    return {"t": t, "gpus": [{"index": i, "energy_j": e} for i, e in enumerate(energies)]}


def test_energy_is_the_counters_rise_interpolated_between_samples() -> None:
    samples = [_sample(10.0, 100.0, 50.0), _sample(10.1, 110.0, 52.0),
               _sample(10.2, 130.0, 54.0)]
    # [10.05, 10.15]: GPU 0 from 105 to 120, GPU 1 from 51 to 53
    assert energy_between(samples, 10.05, 10.15, [0, 1]) == pytest.approx(17.0)
    assert energy_between(samples, 10.05, 10.15, [1]) == pytest.approx(2.0)
    assert energy_between([_sample(10.0, 1.0, None)], 10.0, 10.1, [0, 1]) == "na"
    assert energy_between(samples, 10.0, 10.1, [5]) is None


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return demo_data.build(tmp_path / "data", n=16)


async def _events(daemon: Daemon, run: str, kind: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(base_url=daemon.url, headers=HEADERS) as c:
        r = await c.get("/api/events", params={"run": run, "kind": kind})
    r.raise_for_status()
    found: list[dict[str, Any]] = r.json()
    return found


async def _agent(daemon: Daemon, tmp_path: Path, run: str, *args: str) -> str:
    log = tmp_path / f"{run}.log"
    with log.open("w") as out:
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", "vlmd_agent", "--url", daemon.url, "--run", run,
             "--spool", str(tmp_path / run), *args],
            stdout=out, stderr=out, env={**os.environ, "VLMD_TOKEN": TOKEN})
    with trio.fail_after(60):
        code = await proc.wait()
    assert code == 0, log.read_text()
    return log.read_text()


@pytest.fixture
def engine_url(request: pytest.FixtureRequest) -> Iterator[str]:
    with serving("--engine", request.param, "--max-running", "2",
                 "--kv-per-request", "0.2") as url:
        yield url


@pytest.mark.parametrize("engine_url", ["vllm", "sglang"], indirect=True)
async def test_items_get_the_engines_kv_cache_peak_and_queue_while_they_run(
        daemon: Daemon, tmp_path: Path, dataset: Path, engine_url: str) -> None:
    # 4 in flight against an engine that runs 2 at once: 2 running, 2 waiting, KV at 0.4
    model = f"openai:stream?first_ms=150&gap_ms=10&tokens=8@{engine_url}"
    await _agent(daemon, tmp_path, "r-kv", "--model", model, "--dataset", str(dataset),
                 "--concurrency", "4", "--server-metrics-s", "0.05")
    items = [e["body"] for e in await _events(daemon, "r-kv", "item.completed")]
    assert len(items) == 16
    assert all(0 < b["kv_cache_peak"] <= 0.4 + 1e-9 for b in items)
    assert all(1 <= b["server_running"] <= 2 for b in items)
    assert max(b["kv_cache_peak"] for b in items) == pytest.approx(0.4)
    assert max(b["server_waiting"] for b in items) >= 1
    scrapes = [s for e in await _events(daemon, "r-kv", "watchdog.sample")
               for s in e["body"].get("server", [])]
    assert scrapes and {s["engine"] for s in scrapes} <= {"vllm", "sglang"}


async def test_without_engine_metrics_nothing_is_guessed(
        daemon: Daemon, tmp_path: Path, dataset: Path) -> None:
    with serving("--engine", "none") as url:
        log = await _agent(daemon, tmp_path, "r-nokv", "--model",
                           f"openai:stream?first_ms=5&gap_ms=1&tokens=3@{url}",
                           "--dataset", str(dataset), "--limit", "4")
    items = [e["body"] for e in await _events(daemon, "r-nokv", "item.completed")]
    assert len(items) == 4 and not any("kv_cache_peak" in b for b in items)
    assert "no engine metrics at" in log


async def _watch(daemon: Daemon, tmp_path: Path, run: str, dataset: Path, model: str) -> None:
    """A real wrapper process under a `Watchdog` whose sampler reads the fake NVML."""
    spool = tmp_path / run
    spool.mkdir()
    cfg = WatchdogConfig(WrapperConfig(url=daemon.url, run=run, model=model,
                                       dataset=str(dataset), spool=str(spool)), TOKEN)
    box = Outbox(spool / "watchdog.db", daemon.url, TOKEN).start()
    items = open_outbox(cfg.wrapper, TOKEN).start()
    sampler = Sampler(open_gpus(nvml_module=fake_pynvml, interval_s=0.05), 0.05)
    try:
        with trio.fail_after(60):
            assert await Watchdog(cfg, box, sampler, items).run() == 0
        for outbox in (box, items):
            await trio.to_thread.run_sync(outbox.flush, 10.0)
    finally:
        sampler.close()
        box.close(flush_timeout=0)
        items.close(flush_timeout=0)


async def test_an_in_process_models_items_carry_the_gpu_energy_of_their_request(
        daemon: Daemon, tmp_path: Path, dataset: Path) -> None:
    fake_pynvml.reset(2)
    fake_pynvml.GPUS[0].power_mw, fake_pynvml.GPUS[1].power_mw = 100_000, 50_000  # 150 W
    fake_pynvml.GPUS[1].unsupported = set()
    await _watch(daemon, tmp_path, "r-joules", dataset, "demo:instant:200")
    items = [e["body"] for e in await _events(daemon, "r-joules", "item.completed")]
    assert len(items) == 16
    for body in items:
        assert body["energy_source"] == "nvml"
        expected = 150.0 * body["e2e_ms"] / 1000.0  # ~30 J in ~200 ms
        assert body["energy_j"] == pytest.approx(expected, rel=0.1), body
    samples = await _events(daemon, "r-joules", "watchdog.sample")
    assert all(e["body"]["model_gpus"] == [0, 1] for e in samples)
    async with httpx.AsyncClient(base_url=daemon.url) as c:
        run = (await c.get("/api/runs/r-joules")).json()
    # the run's figure: both GPUs from the start to the end, idle moments between items too
    spent = sum(b["energy_j"] for b in items)
    assert run["energy_source"] == "nvml"
    assert spent * 0.95 < run["energy_j"] < 150.0 * (run["finished_at"] - run["started_at"] + 1)
    correct = sum(b["score"] for b in items)  # demo:instant is right about one time in four
    assert run["joules_per_correct"] == (pytest.approx(run["energy_j"] / correct) if correct
                                         else None)
    assert all(g["energy_j"] > 0 for e in samples for s in e["body"]["samples"]
               for g in s["gpus"])


async def test_a_gpu_without_an_energy_counter_says_na(
        daemon: Daemon, tmp_path: Path, dataset: Path) -> None:
    fake_pynvml.reset(2)
    fake_pynvml.GPUS[1].unsupported = {"nvmlDeviceGetTotalEnergyConsumption"}
    await _watch(daemon, tmp_path, "r-na", dataset, "demo:instant:20")
    items = [e["body"] for e in await _events(daemon, "r-na", "item.completed")]
    assert len(items) == 16
    assert all(b["energy_source"] == "na" and "energy_j" not in b for b in items)
