"""Deliberately faulty kernel families for the collector's tests.

Each is GEMM with a two-config Triton space: BLOCK_N=16 is a correct config, BLOCK_N=32 is
the faulty one (wrong output, a crashed process, or a hang). They have their own family
names, so their rows never mix with real GEMM rows.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

from perftune.collect.families import Config, Inputs
from perftune.collect.families.gemm import GemmFamily
from perftune.collect.problems import Problem

TWO_CONFIGS: dict[str, tuple[int, ...]] = {
    "BLOCK_M": (16,), "BLOCK_N": (16, 32), "BLOCK_K": (16,), "GROUP_M": (1,),
    "num_warps": (1,), "num_stages": (1,),
}


class _FaultyGemm(GemmFamily):
    dataflows = ("cublas", "triton")

    def space(self, dataflow: str) -> dict[str, tuple[int, ...]]:
        self.check_dataflow(dataflow)
        return {} if dataflow == "cublas" else TWO_CONFIGS

    def launcher(self, problem: Problem, dataflow: str, config: Config,
                 inputs: Inputs) -> Callable[[], None]:
        correct = super().launcher(problem, dataflow, config, inputs)
        if config.get("BLOCK_N") != 32:
            return correct
        return self.fault(correct, inputs)

    def fault(self, correct: Callable[[], None], inputs: Inputs) -> Callable[[], None]:
        raise NotImplementedError


class WrongGemm(_FaultyGemm):
    """BLOCK_N=32 writes a result that is off by one everywhere."""

    name = "gemm_wrong"

    def fault(self, correct: Callable[[], None], inputs: Inputs) -> Callable[[], None]:
        def wrong() -> None:
            correct()
            inputs["out"].add_(1)

        return wrong


class CrashingGemm(_FaultyGemm):
    """BLOCK_N=32 kills the process that launches it, as a fatal CUDA error would."""

    name = "gemm_crash"

    def fault(self, correct: Callable[[], None], inputs: Inputs) -> Callable[[], None]:
        return lambda: os._exit(3)


class HangingGemm(_FaultyGemm):
    """BLOCK_N=32 never returns."""

    name = "gemm_hang"

    def fault(self, correct: Callable[[], None], inputs: Inputs) -> Callable[[], None]:
        return lambda: time.sleep(3600)


class BadGpuGemm(GemmFamily):
    """GEMM that, on a campaign worker started with PERFTUNE_TEST_BAD_GPU=1, kills the worker
    process (the parent of its launch process) at its first launch, as a failing GPU's driver
    might; elsewhere plain GEMM."""

    name = "gemm_bad_gpu"

    def launcher(self, problem: Problem, dataflow: str, config: Config,
                 inputs: Inputs) -> Callable[[], None]:
        if os.environ.get("PERFTUNE_TEST_BAD_GPU") == "1":
            os.kill(os.getppid(), signal.SIGKILL)
        return super().launcher(problem, dataflow, config, inputs)


class SlowGpuGemm(GemmFamily):
    """GEMM that, on a campaign worker started with PERFTUNE_TEST_SLOW_GPU=1, takes a second
    longer to set up each config's launch, as a slower GPU might; elsewhere plain GEMM."""

    name = "gemm_slow_gpu"

    def launcher(self, problem: Problem, dataflow: str, config: Config,
                 inputs: Inputs) -> Callable[[], None]:
        if os.environ.get("PERFTUNE_TEST_SLOW_GPU") == "1":
            time.sleep(1.0)
        return super().launcher(problem, dataflow, config, inputs)


class LoggedCompileGemm(GemmFamily):
    """GEMM whose compiling (in a compile pool's process) takes a moment and appends the
    config's BLOCK_N to the file PERFTUNE_TEST_COMPILE_LOG names; BLOCK_N=64 fails to
    compile."""

    name = "gemm_logged_compile"

    def compile(self, problem: Problem, dataflow: str, config: Config, device: str) -> None:
        with open(os.environ["PERFTUNE_TEST_COMPILE_LOG"], "a") as log:
            log.write(f"{config['BLOCK_N']}\n")
        time.sleep(0.5)
        if config["BLOCK_N"] == 64:
            raise ValueError("no such tile")


def gemm(m: int, n: int, k: int, dtype: str, device: str) -> Problem:
    """A GEMM problem on a device, as the tuner takes it."""
    return Problem.of(dtype, m=m, n=n, k=k).on(device)
