"""Which device a collection runs on, and what it is: identity, limits, software, ceilings.

Interpreter runs (no GPU) are recorded under a device of kind ``cpu-interpreter`` whose
timings are wall-clock times of the Triton interpreter, never GPU times.
"""

from __future__ import annotations

import os
import platform
import re
from collections.abc import Callable
from typing import Any

from perftune.collect.families._base import DeviceLimits
from perftune.errors import PerftuneInputError
from perftune.store.keys import software_key

GPU = "gpu"
INTERPRETER = "interpreter"
INTERPRETER_DEVICE_ID = "cpu-triton-interpreter"


def select_mode(interpret: bool | None = None) -> str:
    """``gpu`` when CUDA is available (unless ``interpret``), else ``interpreter``.

    Call before anything imports triton: the interpreter is chosen by environment variable.
    """
    if interpret is None:
        interpret = os.environ.get("TRITON_INTERPRET") == "1" or not _cuda_available()
    elif not interpret and not _cuda_available():
        raise PerftuneInputError("no CUDA GPU is visible; drop --gpu to run under the Triton "
                                 "interpreter on CPU")
    mode = INTERPRETER if interpret else GPU
    prepare_runtime(mode)
    return mode


def prepare_runtime(mode: str) -> None:
    if mode == INTERPRETER:
        os.environ["TRITON_INTERPRET"] = "1"


def torch_device(mode: str) -> str:
    return "cuda" if mode == GPU else "cpu"


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def gpu_device_id(name: str) -> str:
    """The store's device id for a GPU name ('NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3')."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def identify(mode: str) -> dict[str, Any]:
    """The device record (columns of the ``devices`` table) plus ``software``."""
    import torch
    import triton

    software = {"torch_version": torch.__version__, "triton_version": triton.__version__,
                "cuda_version": None, "driver_version": None}
    if mode == INTERPRETER:
        device: dict[str, Any] = {
            "device_id": INTERPRETER_DEVICE_ID,
            "name": f"Triton interpreter on CPU ({_cpu_model()})",
            "kind": "cpu-interpreter",
        }
    else:
        device = _gpu_identity(torch)
        software["cuda_version"] = device["cuda_version"]
        software["driver_version"] = device["driver_version"]
    software["software_key"] = software_key(**software)
    return {**device, "software": software}


def _gpu_identity(torch: Any) -> dict[str, Any]:
    props = torch.cuda.get_device_properties(0)
    device: dict[str, Any] = {
        "device_id": gpu_device_id(props.name),
        "name": props.name,
        "kind": "gpu",
        "compute_capability": f"{props.major}.{props.minor}",
        "sm_count": props.multi_processor_count,
        "memory_bytes": props.total_memory,
        "l2_bytes": getattr(props, "L2_cache_size", None),
        "shared_memory_per_block": getattr(props, "shared_memory_per_block_optin", None),
        "cuda_version": torch.version.cuda,
    }
    device.update(_nvml_identity())
    return device


def _nvml_identity() -> dict[str, Any]:
    try:
        import pynvml

        from perftune.collect.power.nvml import nvml_handle

        pynvml.nvmlInit()
        handle = nvml_handle(pynvml, 0)
        driver = pynvml.nvmlSystemGetDriverVersion()
        return {
            "driver_version": driver.decode() if isinstance(driver, bytes) else driver,
            "max_sm_clock_mhz": pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_SM),
            "max_mem_clock_mhz": pynvml.nvmlDeviceGetMaxClockInfo(handle,
                                                                  pynvml.NVML_CLOCK_MEM),
            "power_limit_w": pynvml.nvmlDeviceGetEnforcedPowerLimit(handle) / 1e3,
        }
    except Exception as exc:  # NVML missing or refused: identity without it
        return {"driver_version": f"unknown ({type(exc).__name__})"}


def limits_of(device: dict[str, Any]) -> DeviceLimits:
    shared = device.get("shared_memory_per_block")
    memory = device.get("memory_bytes")
    return DeviceLimits(shared_memory_per_block=int(shared) if shared else
                        DeviceLimits().shared_memory_per_block,
                        memory_bytes=int(memory) if memory else None)


def calibrate(size: int = 8192, copy_bytes: int = 2 * 2**30) -> dict[str, float]:
    """Measure the device's ceilings: dense fp16/bf16 matmul TFLOP/s (torch.matmul on random
    data) and device-to-device copy bandwidth (bytes read plus written). GPU only."""
    import torch

    from perftune.collect.timers.cuda_events import CudaEventTimer

    if not torch.cuda.is_available():
        raise PerftuneInputError("calibration measures a GPU's ceilings; no CUDA GPU is "
                                 "visible")
    timer = CudaEventTimer(target_ms=200, min_reps=10, max_reps=100)
    results: dict[str, float] = {}
    for name, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
        a = torch.randn(size, size, device="cuda", dtype=dtype)
        b = torch.randn(size, size, device="cuda", dtype=dtype)
        c = torch.empty(size, size, device="cuda", dtype=dtype)
        median = timer.time(_matmul_call(torch, a, b, c)).median_ms
        results[f"peak_tflops_{name}"] = 2 * size**3 / (median * 1e-3) / 1e12
        del a, b, c
    src = torch.randn(copy_bytes // 4, device="cuda")
    dst = torch.empty_like(src)
    median = timer.time(_copy_call(dst, src)).median_ms
    results["copy_bandwidth_gbs"] = 2 * copy_bytes / (median * 1e-3) / 1e9
    return results


def _copy_call(dst: Any, src: Any) -> Callable[[], None]:
    def call() -> None:
        dst.copy_(src)

    return call


def _matmul_call(torch: Any, a: Any, b: Any, c: Any) -> Callable[[], None]:
    def call() -> None:
        torch.matmul(a, b, out=c)

    return call
