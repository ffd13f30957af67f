"""The one GPU facade: NVML, else one long-running ``nvidia-smi -lms``, else nothing (and why).

Every source answers ``sample(pids) -> GpuSample`` and never raises from it. A device is a dict
with exactly `DEVICE_KEYS`; a metric the device cannot give is ``None`` and its key is listed in
the device's ``na``; a device that fails entirely (GPU lost) is
``{"index": i, "lost": True, "error": "..."}``. MB means 1024 * 1024 bytes.
"""

from __future__ import annotations

import importlib
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any, Protocol

DEVICE_KEYS = (
    "index", "uuid", "name", "mem_used_mb", "mem_total_mb", "mem_reserved_mb", "util_gpu",
    "util_mem", "power_w", "temp_c", "proc_mem_mb", "proc_mem_source", "na", "energy_j",
)
"""The keys of every device dict that is not lost, in wire order."""

MB = 1024 * 1024
# NVML return codes (pynvml's NVML_ERROR_*) after which nothing on the device can be trusted.
_LOST_CODES = frozenset({9, 15, 16, 28})  # driver not loaded, GPU lost, reset required, not found
# Codes meaning "this driver has no memory info v2": use v1 from then on.
_NO_V2_CODES = frozenset({2, 3, 13, 25})  # invalid arg, not supported, no function, version
_SMI_FIELDS = (
    "index", "uuid", "name", "memory.used", "memory.total", "memory.reserved", "utilization.gpu",
    "utilization.memory", "power.draw", "temperature.gpu",
)

GpuDict = dict[str, Any]
# the values read from NVML, in the order `_device` reads them
_METRICS = (*DEVICE_KEYS[3:10], "energy_j")


@dataclass(frozen=True)
class GpuSample:
    """One timestamped snapshot of every device: `source` is "nvml", "nvidia-smi" or "none"."""

    t: float
    source: str
    gpus: list[GpuDict]
    error: str | None = None


class GpuSource(Protocol):
    """What `open_gpus` returns; `reason` says why a better source was not used."""

    @property
    def kind(self) -> str:
        """"nvml", "nvidia-smi" or "none"."""
        ...

    @property
    def reason(self) -> str | None:
        """Why the better sources were not used (None for NVML)."""
        ...

    def sample(self, pids: Collection[int]) -> GpuSample:
        """Every device now; `pids` are the processes whose GPU memory is ours."""
        ...

    def close(self) -> None:
        """Release the library or child process; later samples report no devices."""
        ...


@dataclass(frozen=True)
class NotAvailable:
    """A value NVML could not give: the error text, its NVML code, and whether the GPU is gone."""

    error: str
    code: int | None = None

    @property
    def lost(self) -> bool:
        """True when the whole device is unusable, not just this metric."""
        return self.code in _LOST_CODES


def nvml_call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call an NVML function; any failure becomes a `NotAvailable` value instead of an exception.

    This is the one place where NVML errors are handled.
    """
    try:
        return fn(*args, **kwargs)
    except Exception as e:  # NVMLError_*, NVMLLibraryMismatchError, ctypes and type errors
        code = getattr(e, "value", None)
        return NotAvailable(str(e) or type(e).__name__, code if isinstance(code, int) else None)


def _mb(n: float | None) -> float | None:
    return None if n is None else round(n / MB, 3)


def _float(n: float | None) -> float | None:
    return None if n is None else float(n)


@dataclass
class _Device:
    index: int
    handle: Any
    uuid: str | None
    name: str | None
    mem_v2: bool = True


@dataclass
class NvmlSource:
    """GPUs through NVML: the library is initialised once and handles are opened once."""

    nv: Any  # the pynvml module, or a fake with its interface
    devices: list[_Device | NotAvailable]
    kind: str = "nvml"
    reason: str | None = None
    _closed: bool = field(default=False, repr=False)

    def memory(self, dev: _Device) -> tuple[Any, Any, Any]:
        """used, total, reserved bytes: ``--query-gpu=memory.used,memory.total,memory.reserved``.

        Memory info v2 (which has `reserved`; its `used` excludes it, as nvidia-smi shows) where
        the driver has it, else v1 (reserved not available; `used` includes it).
        """
        if dev.mem_v2 and hasattr(self.nv, "nvmlMemory_v2"):
            v2 = self.nv.nvmlMemory_v2
            m = nvml_call(self.nv.nvmlDeviceGetMemoryInfo, dev.handle, version=v2)
            if not isinstance(m, NotAvailable):
                return m.used, m.total, m.reserved
            if m.code is not None and m.code not in _NO_V2_CODES:  # None: e.g. an old pynvml
                return m, m, m
        dev.mem_v2 = False
        m = nvml_call(self.nv.nvmlDeviceGetMemoryInfo, dev.handle)
        if isinstance(m, NotAvailable):
            return m, m, m
        return m.used, m.total, NotAvailable("memory info v2 not available")

    def utilization(self, dev: _Device) -> tuple[Any, Any]:
        """Percent busy: ``--query-gpu=utilization.gpu,utilization.memory``."""
        u = nvml_call(self.nv.nvmlDeviceGetUtilizationRates, dev.handle)
        return (u, u) if isinstance(u, NotAvailable) else (u.gpu, u.memory)

    def power(self, dev: _Device) -> Any:
        """Watts drawn: ``--query-gpu=power.draw`` (NVML reports milliwatts)."""
        mw = nvml_call(self.nv.nvmlDeviceGetPowerUsage, dev.handle)
        return mw if isinstance(mw, NotAvailable) else mw / 1000.0

    def energy(self, dev: _Device) -> Any:
        """Joules used since the driver loaded (NVML counts millijoules; Volta and later):
        ``nvmlDeviceGetTotalEnergyConsumption``, which nvidia-smi's --query-gpu lacks."""
        mj = nvml_call(self.nv.nvmlDeviceGetTotalEnergyConsumption, dev.handle)
        return mj if isinstance(mj, NotAvailable) else mj / 1000.0

    def temperature(self, dev: _Device) -> Any:
        """Core temperature in degrees C: ``--query-gpu=temperature.gpu``."""
        return nvml_call(self.nv.nvmlDeviceGetTemperature, dev.handle, self.nv.NVML_TEMPERATURE_GPU)

    def processes(self, dev: _Device) -> dict[int, int] | NotAvailable:
        """GPU bytes per pid, compute and graphics: ``--query-compute-apps=pid,used_memory``."""
        found: dict[int, int] = {}
        for fn in (self.nv.nvmlDeviceGetComputeRunningProcesses,
                   self.nv.nvmlDeviceGetGraphicsRunningProcesses):
            procs = nvml_call(fn, dev.handle)
            if isinstance(procs, NotAvailable):
                return procs
            for p in procs:
                if p.usedGpuMemory is None:  # not reported (no permission, WDDM)
                    return NotAvailable("per-process memory not reported")
                # A process in both lists holds one allocation, so take it once.
                found[p.pid] = max(found.get(p.pid, 0), p.usedGpuMemory)
        return found

    def sample(self, pids: Collection[int]) -> GpuSample:
        """Every device now; see the module docstring for the device dicts."""
        t = time.time()
        if self._closed:
            return GpuSample(t, self.kind, [], "NVML source is closed")
        gpus: list[GpuDict] = []
        procs: list[dict[int, int] | NotAvailable] = []
        for i, dev in enumerate(self.devices):
            d, p = self._device(i, dev, bool(pids))
            gpus.append(d)
            procs.append(p)
        # No pid of ours on any device although processes run: the PIDs are from another
        # namespace (a container without the host's), so the device's used memory stands in.
        matched = any(not isinstance(p, NotAvailable) and not p.keys().isdisjoint(pids)
                      for p in procs)
        for d, p in zip(gpus, procs, strict=True):
            if d.get("lost"):
                continue
            if matched and not isinstance(p, NotAvailable):
                mine = sum(b for pid, b in p.items() if pid in pids)
                d["proc_mem_mb"], d["proc_mem_source"] = _mb(mine), "pid"
            elif matched or d["mem_used_mb"] is None:
                d["na"].append("proc_mem_mb")
            else:
                d["proc_mem_mb"], d["proc_mem_source"] = d["mem_used_mb"], "device"
        return GpuSample(t, self.kind, gpus)

    def _device(self, i: int, dev: _Device | NotAvailable,
                want_procs: bool) -> tuple[GpuDict, dict[int, int] | NotAvailable]:
        if isinstance(dev, NotAvailable):
            return {"index": i, "lost": True, "error": dev.error}, dev
        # Runs 20 times a second per device: one tuple, one list and one dict, no per-key loop.
        values: tuple[Any, ...] = (*self.memory(dev), *self.utilization(dev), self.power(dev),
                                   self.temperature(dev), self.energy(dev))
        procs = self.processes(dev) if want_procs else {}
        na = [k for k, v in zip(_METRICS, values, strict=True) if isinstance(v, NotAvailable)]
        if na or isinstance(procs, NotAvailable):
            for v in (*values, procs):
                if isinstance(v, NotAvailable) and v.lost:
                    return {"index": i, "lost": True, "error": v.error}, v
            values = tuple(None if isinstance(v, NotAvailable) else v for v in values)
        used, total, reserved, util_gpu, util_mem, power, temp, energy = values
        return {"index": dev.index, "uuid": dev.uuid, "name": dev.name,
                "mem_used_mb": _mb(used), "mem_total_mb": _mb(total),
                "mem_reserved_mb": _mb(reserved), "util_gpu": _float(util_gpu),
                "util_mem": _float(util_mem), "power_w": _float(power), "temp_c": _float(temp),
                "proc_mem_mb": None, "proc_mem_source": None, "na": na,
                "energy_j": _float(energy)}, procs

    def close(self) -> None:
        """Shut NVML down once."""
        if not self._closed:
            self._closed = True
            nvml_call(self.nv.nvmlShutdown)


def open_nvml(nv: Any) -> NvmlSource | NotAvailable:
    """Initialise NVML and open every device handle once, or say why not."""
    init = nvml_call(nv.nvmlInit)
    if isinstance(init, NotAvailable):
        return init
    count = nvml_call(nv.nvmlDeviceGetCount)
    if isinstance(count, NotAvailable):
        nvml_call(nv.nvmlShutdown)
        return count
    devices: list[_Device | NotAvailable] = []
    for i in range(count):
        h = nvml_call(nv.nvmlDeviceGetHandleByIndex, i)
        if isinstance(h, NotAvailable):
            devices.append(h)
            continue
        uuid, name = nvml_call(nv.nvmlDeviceGetUUID, h), nvml_call(nv.nvmlDeviceGetName, h)
        devices.append(_Device(i, h, None if isinstance(uuid, NotAvailable) else str(uuid),
                               None if isinstance(name, NotAvailable) else str(name)))
    return NvmlSource(nv, devices)


def parse_smi_line(line: str, fields: tuple[str, ...] = _SMI_FIELDS) -> GpuDict | None:
    """One ``--format=csv,noheader,nounits`` line as a device dict; None if it is not one.

    "[N/A]", "[Not Supported]" and the like become None and are listed in ``na``. nvidia-smi
    cannot attribute memory to our pids here, so ``proc_mem_mb`` is the device's used memory.
    """
    cells = [c.strip() for c in line.split(",")]
    if len(cells) != len(fields) or not cells[0].isdigit():
        return None
    raw = dict(zip(fields, cells, strict=True))
    d: GpuDict = {"index": int(raw["index"]), "uuid": raw["uuid"], "name": raw["name"]}
    na: list[str] = []
    for key, f in zip(DEVICE_KEYS[3:10], _SMI_FIELDS[3:], strict=True):
        try:
            d[key] = float(raw.get(f, ""))
        except ValueError:
            d[key] = None
            na.append(key)
    if d["mem_used_mb"] is None:
        d |= {"proc_mem_mb": None, "proc_mem_source": None, "na": [*na, "proc_mem_mb"]}
    else:
        d |= {"proc_mem_mb": d["mem_used_mb"], "proc_mem_source": "device", "na": na}
    d["na"].append("energy_j")  # nvidia-smi has no energy counter
    d["energy_j"] = None
    return d


class SmiSource:
    """GPUs through ONE long-running ``nvidia-smi ... -lms N``, read line by line by a thread."""

    kind = "nvidia-smi"

    def __init__(self, exe: str, interval_s: float, reason: str | None = None) -> None:
        self.reason = reason
        self._exe, self._ms = exe, max(1, round(interval_s * 1000))
        self._lock = threading.Lock()
        self._latest: dict[int, GpuDict] = {}
        self._error: str | None = None
        self._closed = False
        self._proc = self._start(_SMI_FIELDS)
        self._thread = threading.Thread(target=self._read, name="nvidia-smi reader", daemon=True)
        self._thread.start()

    def _start(self, fields: tuple[str, ...]) -> subprocess.Popen[str]:
        self._fields = fields
        return subprocess.Popen(
            [self._exe, f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits",
             "-lms", str(self._ms)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True)

    def _read(self) -> None:
        while True:
            last = ""
            assert self._proc.stdout is not None
            for line in self._proc.stdout:
                d = parse_smi_line(line, self._fields)
                if d is None:
                    last = line.strip() or last
                    continue
                with self._lock:
                    self._latest[d["index"]] = {k: d[k] for k in DEVICE_KEYS}
            code = self._proc.wait()
            with self._lock:
                if self._closed:
                    return
                # Older drivers do not know memory.reserved: ask again without it, once.
                if "memory.reserved" in last and "memory.reserved" in self._fields:
                    self._proc.stdout.close()
                    self._proc = self._start(tuple(f for f in self._fields
                                                   if f != "memory.reserved"))
                    continue
                self._error = f"nvidia-smi exited with code {code}: {last[:200]}"
                return

    def sample(self, pids: Collection[int]) -> GpuSample:
        """The latest line nvidia-smi printed for every device; `pids` cannot be used here."""
        with self._lock:
            if self._error or self._closed:
                return GpuSample(time.time(), self.kind, [], self._error or "source is closed")
            gpus = [dict(d, na=list(d["na"])) for _, d in sorted(self._latest.items())]
        return GpuSample(time.time(), self.kind, gpus)

    @property
    def pid(self) -> int:
        """The nvidia-smi process's pid (one process for the source's whole life)."""
        return self._proc.pid

    def close(self) -> None:
        """Stop nvidia-smi and its reader thread."""
        with self._lock:
            self._closed = True
            proc = self._proc
        proc.terminate()
        proc.wait()
        self._thread.join(timeout=5)
        if proc.stdout is not None:
            proc.stdout.close()


@dataclass
class NullSource:
    """No GPU reachable: every sample has no devices and says why."""

    reason: str
    kind: str = "none"

    def sample(self, pids: Collection[int]) -> GpuSample:
        """No devices, with `reason` as the error."""
        return GpuSample(time.time(), self.kind, [], self.reason)

    def close(self) -> None:
        """Nothing to release."""


def open_gpus(nvml_module: Any = None, *, interval_s: float = 0.05,
              smi: str | None = "nvidia-smi") -> GpuSource:
    """The best GPU source here: NVML, else nvidia-smi on PATH, else a `NullSource` saying why.

    `nvml_module` replaces ``import pynvml`` (tests pass a fake); `smi` names the nvidia-smi
    executable to look up on PATH (None: do not try it). The caller closes the source.
    """
    nv, why = nvml_module, "NVML: pynvml is not importable"
    if nv is None:
        try:
            nv = importlib.import_module("pynvml")
        except ImportError:
            nv = None
    if nv is not None:
        opened = open_nvml(nv)
        if isinstance(opened, NvmlSource):
            return opened
        why = f"NVML: {opened.error}"
    exe = shutil.which(smi) if smi else None
    if exe is None:
        return NullSource(f"{why}; nvidia-smi: not on PATH")
    try:
        return SmiSource(exe, interval_s, why)
    except OSError as e:
        return NullSource(f"{why}; nvidia-smi: {e}")
