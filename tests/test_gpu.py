"""The GPU facade: NVML (fake here, real where VLMD_REAL_NVML=1 and a GPU exist), nvidia-smi, none.

Contract tests take the `nvml` fixture and run against the real pynvml too when it is there;
scenario tests (lost GPU, foreign pids, old drivers) need the fake to set the scenario up.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import psutil
import pynvml
import pytest

from tests import fake_pynvml as fake
from vlmd_agent.watch.gpu import (
    DEVICE_KEYS,
    GpuSource,
    NullSource,
    SmiSource,
    open_gpus,
    parse_smi_line,
)

MB = 1024 * 1024
METRICS = DEVICE_KEYS[3:11]  # mem_used_mb .. proc_mem_mb: numbers or None
ME = os.getpid()


def _real_gpu_present() -> bool:
    if os.environ.get("VLMD_REAL_NVML") != "1":
        return False
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return False
    pynvml.nvmlShutdown()
    return True


@pytest.fixture(params=["fake", "real"] if _real_gpu_present() else ["fake"])
def nvml(request: pytest.FixtureRequest) -> Iterator[Any]:
    """The pynvml module to test: the fake with 2 GPUs (one running this process), or the real."""
    if request.param == "real":
        yield pynvml
        return
    fake.reset(2)
    fake.GPUS[0].compute = [(ME, 700 * MB)]
    yield fake


@pytest.fixture
def no_smi(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A PATH on which no nvidia-smi can be found."""
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))


def _sample(nvml: Any, pids: list[int] | range) -> list[dict[str, Any]]:
    with closing(open_gpus(nvml, smi=None)) as src:
        assert src.kind == "nvml", src.reason
        return src.sample(pids).gpus


# --- the contract, against the fake and (where present) the real library ---

def test_every_device_has_exactly_the_documented_keys(nvml: Any) -> None:
    gpus = _sample(nvml, [ME])
    assert gpus
    for i, d in enumerate(gpus):
        assert list(d) == list(DEVICE_KEYS)
        assert d["index"] == i
        assert isinstance(d["uuid"], str) and isinstance(d["name"], str)


def test_values_are_numbers_or_none_and_na_lists_exactly_the_missing(nvml: Any) -> None:
    for d in _sample(nvml, [ME]):
        for k in METRICS:
            assert d[k] is None or type(d[k]) is float, (k, d[k])
        assert sorted(d["na"]) == sorted(k for k in METRICS if d[k] is None)
        assert d["proc_mem_source"] in {"pid", "device"}
        assert d["mem_used_mb"] is not None and d["mem_total_mb"] is not None
        assert 0 <= d["mem_used_mb"] <= d["mem_total_mb"]


def test_sample_never_raises_whatever_the_pids(nvml: Any) -> None:
    with closing(open_gpus(nvml, smi=None)) as src:
        for pids in ([], [ME], [2**31 - 1], range(1, 5000), [ME] * 3):
            sample = src.sample(pids)
            assert sample.source == "nvml" and sample.error is None
            assert all(set(d) == set(DEVICE_KEYS) for d in sample.gpus)


def test_closed_source_reports_no_devices_and_why(nvml: Any) -> None:
    src = open_gpus(nvml, smi=None)
    src.close()
    sample = src.sample([ME])
    assert sample.gpus == [] and sample.error == "NVML source is closed"


# --- scenarios the fake sets up ---

def test_nvml_is_initialised_once_and_handles_opened_once() -> None:
    fake.reset(3)
    with closing(open_gpus(fake, smi=None)) as src:
        for _ in range(10):
            src.sample([ME])
    assert fake.CALLS["nvmlInit"] == 1
    assert fake.CALLS["nvmlDeviceGetHandleByIndex"] == 3
    assert fake.CALLS["nvmlDeviceGetUUID"] == 3
    assert fake.CALLS["nvmlShutdown"] == 1


def test_unsupported_metric_is_none_and_named_in_na() -> None:
    fake.reset(2)
    fake.GPUS[1].unsupported = {"nvmlDeviceGetPowerUsage", "nvmlDeviceGetUtilizationRates"}
    g0, g1 = _sample(fake, [ME])
    assert g0["power_w"] == 71.5 and g0["util_gpu"] == 40.0 and g0["na"] == []
    assert g1["power_w"] is None and g1["util_gpu"] is None and g1["util_mem"] is None
    assert sorted(g1["na"]) == ["power_w", "util_gpu", "util_mem"]
    assert g1["temp_c"] == 55.0 and g1["mem_used_mb"] == 1000.0


def test_the_energy_counter_is_joules_and_na_where_the_gpu_lacks_it() -> None:
    fake.reset(2)
    fake.GPUS[0].energy_mj, fake.GPUS[0].power_mw = 7_000_000, 0
    fake.GPUS[1].unsupported = {"nvmlDeviceGetTotalEnergyConsumption"}
    g0, g1 = _sample(fake, [ME])
    assert g0["energy_j"] == 7000.0 and g0["na"] == []
    assert g1["energy_j"] is None and g1["na"] == ["energy_j"]
    fake.GPUS[0].power_mw = 100_000  # 100 W from now: the counter rises with the clock
    fake.GPUS[0].energy_at = time.time() - 2.0
    (later, _) = _sample(fake, [ME])
    assert 7199.0 < later["energy_j"] < 7260.0


def test_lost_gpu_becomes_a_lost_record_and_the_others_still_report() -> None:
    fake.reset(3)
    with closing(open_gpus(fake, smi=None)) as src:
        before = src.sample([ME]).gpus
        fake.GPUS[1].lost = True
        after = src.sample([ME]).gpus
    assert before[1]["mem_used_mb"] == 1000.0
    assert after[1] == {"index": 1, "lost": True, "error": "GPU is lost"}
    assert [after[0]["index"], after[2]["index"]] == [0, 2]
    assert after[0]["mem_used_mb"] == after[2]["mem_used_mb"] == 1000.0


def test_gpu_lost_before_start_is_a_lost_record() -> None:
    fake.reset(2)
    fake.GPUS[0].handle_error = True
    gpus = _sample(fake, [ME])
    assert gpus[0] == {"index": 0, "lost": True, "error": "GPU is lost"}
    assert gpus[1]["index"] == 1 and gpus[1]["mem_total_mb"] == 16000.0


def test_our_pids_sum_compute_and_graphics_memory() -> None:
    fake.reset(2)
    child = ME + 1
    fake.GPUS[0].compute = [(ME, 700 * MB), (child, 100 * MB), (4242, 5000 * MB)]
    fake.GPUS[0].graphics = [(child, 100 * MB)]  # the same allocation seen twice
    g0, g1 = _sample(fake, [ME, child])
    assert (g0["proc_mem_mb"], g0["proc_mem_source"]) == (800.0, "pid")
    # Our pids are visible elsewhere, so none on GPU 1 means we use none of it.
    assert (g1["proc_mem_mb"], g1["proc_mem_source"]) == (0.0, "pid")


def test_foreign_pids_fall_back_to_the_device_used_memory() -> None:
    fake.reset(2)
    fake.GPUS[0].compute = [(1, 700 * MB)]  # a container without the host's PID namespace
    fake.GPUS[1].used = 2500 * MB
    g0, g1 = _sample(fake, [ME])
    assert (g0["proc_mem_mb"], g0["proc_mem_source"]) == (1000.0, "device")
    assert (g1["proc_mem_mb"], g1["proc_mem_source"]) == (2500.0, "device")


def test_unreported_process_memory_falls_back_to_the_device() -> None:
    fake.reset(1)
    fake.GPUS[0].compute = [(ME, None)]
    (g,) = _sample(fake, [ME])
    assert (g["proc_mem_mb"], g["proc_mem_source"]) == (1000.0, "device")


def test_memory_info_v2_gives_reserved_and_used_without_it() -> None:
    fake.reset(1)
    (g,) = _sample(fake, [ME])
    assert (g["mem_used_mb"], g["mem_reserved_mb"], g["mem_total_mb"]) == (1000.0, 300.0, 16000.0)
    assert "mem_reserved_mb" not in g["na"]


def test_memory_info_v1_on_old_drivers_is_tried_for_v2_once() -> None:
    fake.reset(1, has_memory_v2=False)
    with closing(open_gpus(fake, smi=None)) as src:
        samples = [src.sample([ME]).gpus[0] for _ in range(5)]
    g = samples[-1]
    # v1 "used" includes the reserved memory: total - free.
    assert (g["mem_used_mb"], g["mem_reserved_mb"]) == (1300.0, None)
    assert g["na"] == ["mem_reserved_mb"]
    assert fake.CALLS["nvmlDeviceGetMemoryInfo"] == 6  # one failed v2 call, then v1 five times


def test_nvml_init_failure_without_nvidia_smi_gives_a_null_source_saying_why(no_smi: None) -> None:
    fake.reset(1, init_error=fake.NVML_ERROR_LIBRARY_NOT_FOUND)
    with closing(open_gpus(fake)) as src:
        sample = src.sample([ME])
    assert isinstance(src, NullSource) and src.kind == "none"
    assert sample.gpus == [] and sample.source == "none"
    assert sample.error == "NVML: NVML Shared Library Not Found; nvidia-smi: not on PATH"


def test_real_pynvml_is_used_or_its_failure_is_reported(no_smi: None) -> None:
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as e:
        why = str(e)
    else:
        pynvml.nvmlShutdown()
        why = ""
    with closing(open_gpus()) as src:
        sample = src.sample([ME])
    if why:  # no GPU here: NVML fails and the reason names it
        assert isinstance(src, NullSource)
        assert sample.error == f"NVML: {why}; nvidia-smi: not on PATH"
    else:
        assert src.kind == "nvml" and sample.gpus and sample.error is None


def test_fake_errors_and_constants_match_the_real_library() -> None:
    for cls in fake.ERROR_CLASSES:
        real = getattr(pynvml, cls.__name__)
        assert issubclass(real, pynvml.NVMLError)
        assert real().value == cls().value
    for name in ["NVML_TEMPERATURE_GPU", "nvmlMemory_v2", "NVML_ERROR_GPU_IS_LOST",
                 "NVML_ERROR_NOT_SUPPORTED", "NVML_ERROR_LIBRARY_NOT_FOUND"]:
        assert getattr(pynvml, name) == getattr(fake, name)
    for name in dir(fake):
        if name.startswith("nvml") and callable(getattr(fake, name)):
            assert callable(getattr(pynvml, name)), name


# --- the nvidia-smi fallback, with a fake nvidia-smi executable ---

SMI_SCRIPT = """#!{python}
import os, sys, time
with open({log!r}, "a") as f:
    f.write(f"{{os.getpid()}} {{' '.join(sys.argv[1:])}}\\n")
args = sys.argv[1:]
fields = next(a for a in args if a.startswith("--query-gpu=")).split("=", 1)[1].split(",")
ms = int(args[args.index("-lms") + 1])
if {mode!r} == "old" and "memory.reserved" in fields:
    print('Field "memory.reserved" is not a valid field to query.', flush=True)
    sys.exit(2)
if {mode!r} == "broken":
    print("NVIDIA-SMI has failed because it couldn't communicate with the driver.", flush=True)
    sys.exit(9)
rows = [
    dict(zip({fields!r}, ["0", "GPU-aaaa", "NVIDIA H200", "1234", "143771", "512", "37", "12",
                          "123.45", "41"])),
    dict(zip({fields!r}, ["1", "GPU-bbbb", "NVIDIA H200", "77", "143771", "[Not Supported]",
                          "0", "[N/A]", "[N/A]", "30"])),
]
while True:
    for row in rows:
        print(", ".join(row[f] for f in fields), flush=True)
    time.sleep(ms / 1000)
"""
SMI_FIELDS = ["index", "uuid", "name", "memory.used", "memory.total", "memory.reserved",
              "utilization.gpu", "utilization.memory", "power.draw", "temperature.gpu"]


def _fake_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str = "ok") -> Path:
    bin_dir, log = tmp_path / "bin", tmp_path / "smi.log"
    bin_dir.mkdir()
    exe = bin_dir / "nvidia-smi"
    exe.write_text(SMI_SCRIPT.format(python=sys.executable, log=str(log), mode=mode,
                                     fields=SMI_FIELDS))
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    fake.reset(1, init_error=fake.NVML_ERROR_DRIVER_NOT_LOADED)
    return log


def _wait_for_gpus(src: GpuSource, timeout: float = 10.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sample = src.sample([ME])
        if len(sample.gpus) == 2 or sample.error:
            return sample.gpus
        time.sleep(0.01)
    raise AssertionError("the fake nvidia-smi printed nothing")


def test_nvidia_smi_is_one_long_running_process_and_its_lines_are_parsed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = _fake_smi(tmp_path, monkeypatch)
    with closing(open_gpus(fake, interval_s=0.02)) as src:
        assert isinstance(src, SmiSource)
        assert src.reason == "NVML: Driver Not Loaded"
        g0, g1 = _wait_for_gpus(src)
        for _ in range(20):
            assert len(src.sample([ME]).gpus) == 2
            time.sleep(0.01)
        smi_children = [p for p in psutil.Process().children() if p.pid == src.pid]
        assert len(smi_children) == 1 and smi_children[0].is_running()
    starts = log.read_text().splitlines()
    assert len(starts) == 1 and starts[0].split()[0] == str(src.pid)
    assert "-lms 20" in starts[0] and "--format=csv,noheader,nounits" in starts[0]
    assert g0 == {"index": 0, "uuid": "GPU-aaaa", "name": "NVIDIA H200", "mem_used_mb": 1234.0,
                  "mem_total_mb": 143771.0, "mem_reserved_mb": 512.0, "util_gpu": 37.0,
                  "util_mem": 12.0, "power_w": 123.45, "temp_c": 41.0, "proc_mem_mb": 1234.0,
                  "proc_mem_source": "device", "na": ["energy_j"],
                  "energy_j": None}
    assert list(g1) == list(DEVICE_KEYS)
    assert (g1["mem_reserved_mb"], g1["util_mem"], g1["power_w"]) == (None, None, None)
    assert g1["na"] == ["mem_reserved_mb", "util_mem", "power_w", "energy_j"]
    assert not psutil.pid_exists(src.pid) or psutil.Process(src.pid).status() == "zombie"


def test_nvidia_smi_without_memory_reserved_is_asked_again_without_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = _fake_smi(tmp_path, monkeypatch, mode="old")
    with closing(open_gpus(fake, interval_s=0.02)) as src:
        g0, _ = _wait_for_gpus(src)
    starts = log.read_text().splitlines()
    assert len(starts) == 2 and "memory.reserved" not in starts[1]
    assert g0["mem_reserved_mb"] is None and g0["na"] == ["mem_reserved_mb", "energy_j"]
    assert g0["mem_used_mb"] == 1234.0


def test_nvidia_smi_that_fails_gives_no_devices_and_its_message(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_smi(tmp_path, monkeypatch, mode="broken")
    with closing(open_gpus(fake, interval_s=0.02)) as src:
        assert _wait_for_gpus(src) == []
        sample = src.sample([ME])
    assert sample.error is not None
    assert sample.error.startswith("nvidia-smi exited with code 9: NVIDIA-SMI has failed")


def test_parse_smi_line_rejects_what_is_not_a_device_line() -> None:
    assert parse_smi_line("No devices were found") is None
    assert parse_smi_line("") is None
    d = parse_smi_line("3, GPU-x, A100, [N/A], 81920, 0, 1, 2, 60.5, [Unknown Error]")
    assert d is not None and d["index"] == 3 and d["temp_c"] is None
    assert d["proc_mem_mb"] is None
    assert d["na"] == ["mem_used_mb", "temp_c", "proc_mem_mb", "energy_j"]
