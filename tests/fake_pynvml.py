"""A stand-in for the parts of ``pynvml`` that vlmd_agent.watch.gpu uses, for machines without
a GPU.

Same names, signatures, error classes and codes as nvidia-ml-py; the GPUs are plain objects in
`GPUS` that a test sets up with `reset` and then changes (a metric `unsupported`, a GPU `lost`,
processes with foreign pids). `CALLS` counts every call by function name. The energy counter
rises at the GPU's ``power_mw`` with the wall clock, as a real one does.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, ClassVar

NVML_SUCCESS = 0
NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_INVALID_ARGUMENT = 2
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_FUNCTION_NOT_FOUND = 13
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_UNKNOWN = 999
NVML_TEMPERATURE_GPU = 0
nvmlMemory_v2 = 0x02000028

_TEXT = {1: "Uninitialized", 2: "Invalid Argument", 3: "Not Supported",
         4: "Insufficient Permissions", 9: "Driver Not Loaded",
         12: "NVML Shared Library Not Found", 13: "Function Not Found", 15: "GPU is lost",
         999: "Unknown Error"}


class NVMLError(Exception):
    """Base of every NVML error; `value` is the NVML return code, as in pynvml.

    ``NVMLError(code)`` for any code; the subclasses know their own: ``NVMLError_GpuIsLost()``.
    """

    code: ClassVar[int | None] = None
    value: int

    def __init__(self, *args: Any) -> None:
        value = self.code if self.code is not None else args[0]
        super().__init__(value)
        self.value = value

    def __str__(self) -> str:
        return _TEXT.get(self.value, f"NVML Error with code {self.value}")


def _error_class(name: str, code: int) -> type[NVMLError]:
    return type(name, (NVMLError,), {"code": code, "__module__": __name__})


NVMLError_Uninitialized = _error_class("NVMLError_Uninitialized", NVML_ERROR_UNINITIALIZED)
NVMLError_InvalidArgument = _error_class("NVMLError_InvalidArgument", NVML_ERROR_INVALID_ARGUMENT)
NVMLError_NotSupported = _error_class("NVMLError_NotSupported", NVML_ERROR_NOT_SUPPORTED)
NVMLError_NoPermission = _error_class("NVMLError_NoPermission", NVML_ERROR_NO_PERMISSION)
NVMLError_DriverNotLoaded = _error_class("NVMLError_DriverNotLoaded",
                                         NVML_ERROR_DRIVER_NOT_LOADED)
NVMLError_LibraryNotFound = _error_class("NVMLError_LibraryNotFound",
                                         NVML_ERROR_LIBRARY_NOT_FOUND)
NVMLError_FunctionNotFound = _error_class("NVMLError_FunctionNotFound",
                                          NVML_ERROR_FUNCTION_NOT_FOUND)
NVMLError_GpuIsLost = _error_class("NVMLError_GpuIsLost", NVML_ERROR_GPU_IS_LOST)
NVMLError_Unknown = _error_class("NVMLError_Unknown", NVML_ERROR_UNKNOWN)

ERROR_CLASSES = (NVMLError_Uninitialized, NVMLError_InvalidArgument, NVMLError_NotSupported,
                 NVMLError_NoPermission, NVMLError_DriverNotLoaded, NVMLError_LibraryNotFound,
                 NVMLError_FunctionNotFound, NVMLError_GpuIsLost, NVMLError_Unknown)
MB = 1024 * 1024


@dataclass
class FakeGpu:
    """One device. `unsupported` holds names of functions that raise NotSupported on it."""

    used: int = 1000 * MB
    total: int = 16000 * MB
    reserved: int = 300 * MB
    util_gpu: int = 40
    util_mem: int = 20
    power_mw: int = 71500
    temp_c: int = 55
    energy_mj: int = 5_000_000_000  # at `energy_at`; it rises at `power_mw` from then
    energy_at: float = field(default_factory=time.time)
    compute: list[tuple[int, int | None]] = field(default_factory=list)  # (pid, bytes)
    graphics: list[tuple[int, int | None]] = field(default_factory=list)
    unsupported: set[str] = field(default_factory=set)
    lost: bool = False
    handle_error: bool = False


GPUS: list[FakeGpu] = []
CALLS: Counter[str] = Counter()
STATE = SimpleNamespace(init_error=None, has_memory_v2=True, initialised=False)


def reset(n: int = 2, *, init_error: int | None = None, has_memory_v2: bool = True) -> None:
    """`n` healthy GPUs; NVML init fails with `init_error` if given; v1 memory info only if
    not `has_memory_v2` (an older driver)."""
    GPUS[:] = [FakeGpu() for _ in range(n)]
    CALLS.clear()
    STATE.init_error, STATE.has_memory_v2, STATE.initialised = init_error, has_memory_v2, False


def _gpu(fn: str, handle: Any) -> FakeGpu:
    CALLS[fn] += 1
    if not STATE.initialised:
        raise NVMLError_Uninitialized()
    gpu: FakeGpu = GPUS[handle.index]
    if gpu.lost:
        raise NVMLError_GpuIsLost()
    if fn in gpu.unsupported:
        raise NVMLError_NotSupported()
    return gpu


def nvmlInit() -> None:
    CALLS["nvmlInit"] += 1
    if STATE.init_error is not None:
        raise _CLASSES.get(STATE.init_error, NVMLError)(STATE.init_error)
    STATE.initialised = True


def nvmlShutdown() -> None:
    CALLS["nvmlShutdown"] += 1
    STATE.initialised = False


def nvmlDeviceGetCount() -> int:
    CALLS["nvmlDeviceGetCount"] += 1
    return len(GPUS)


def nvmlDeviceGetHandleByIndex(index: int) -> Any:
    CALLS["nvmlDeviceGetHandleByIndex"] += 1
    if GPUS[index].handle_error:
        raise NVMLError_GpuIsLost()
    return SimpleNamespace(index=index)


def nvmlDeviceGetUUID(handle: Any) -> str:
    _gpu("nvmlDeviceGetUUID", handle)
    return f"GPU-00000000-0000-0000-0000-{handle.index:012d}"


def nvmlDeviceGetName(handle: Any) -> str:
    _gpu("nvmlDeviceGetName", handle)
    return "Fake GPU 16GB"


def nvmlDeviceGetMemoryInfo(handle: Any, version: int | None = None) -> Any:
    g = _gpu("nvmlDeviceGetMemoryInfo", handle)
    if not version:
        return SimpleNamespace(total=g.total, free=g.total - g.used - g.reserved,
                               used=g.used + g.reserved)
    if not STATE.has_memory_v2:
        raise NVMLError_FunctionNotFound()
    return SimpleNamespace(version=version, total=g.total, reserved=g.reserved,
                           free=g.total - g.used - g.reserved, used=g.used)


def nvmlDeviceGetUtilizationRates(handle: Any) -> Any:
    g = _gpu("nvmlDeviceGetUtilizationRates", handle)
    return SimpleNamespace(gpu=g.util_gpu, memory=g.util_mem)


def nvmlDeviceGetPowerUsage(handle: Any) -> int:
    return _gpu("nvmlDeviceGetPowerUsage", handle).power_mw


def nvmlDeviceGetTotalEnergyConsumption(handle: Any) -> int:
    """Millijoules since the driver loaded: `energy_mj` plus `power_mw` over the time since."""
    g = _gpu("nvmlDeviceGetTotalEnergyConsumption", handle)
    return g.energy_mj + int(g.power_mw * (time.time() - g.energy_at))


def nvmlDeviceGetTemperature(handle: Any, sensor: int) -> int:
    g = _gpu("nvmlDeviceGetTemperature", handle)
    if sensor != NVML_TEMPERATURE_GPU:
        raise NVMLError_InvalidArgument()
    return g.temp_c


def _procs(rows: list[tuple[int, int | None]]) -> list[Any]:
    return [SimpleNamespace(pid=pid, usedGpuMemory=used, gpuInstanceId=0xFFFFFFFF,
                            computeInstanceId=0xFFFFFFFF) for pid, used in rows]


def nvmlDeviceGetComputeRunningProcesses(handle: Any) -> list[Any]:
    return _procs(_gpu("nvmlDeviceGetComputeRunningProcesses", handle).compute)


def nvmlDeviceGetGraphicsRunningProcesses(handle: Any) -> list[Any]:
    return _procs(_gpu("nvmlDeviceGetGraphicsRunningProcesses", handle).graphics)


_CLASSES: dict[int, type[NVMLError]] = {c().value: c for c in ERROR_CLASSES}
reset()
