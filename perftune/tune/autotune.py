"""``tuner.autotune``: a drop-in for ``triton.autotune`` on GEMM kernels that benchmarks only
the configs the runtime model ranks best.

    from perftune.tune.autotune import autotune

    @autotune(configs=[triton.Config({...}, num_warps=4, num_stages=3), ...],
              key=["M", "N", "K"], budget=8)
    @triton.jit
    def matmul_kernel(a_ptr, b_ptr, c_ptr, M, N, K, ..., BLOCK_M: tl.constexpr, ...):
        ...

It is ``triton.autotune`` itself (same cache per key, same benchmarking, same ``best_config``)
with one addition: on the first call for a key, the configs are ranked by perftune's forest for
this problem, dtype and GPU, and only the ``budget`` best are compiled and timed, instead of
all of them. Config parameters are read by name: ``BLOCK_M``, ``BLOCK_N``, ``BLOCK_K``,
``GROUP_M`` (default 1), ``SPLIT_K`` (default 1), ``num_warps`` and ``num_stages``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from perftune.errors import PerftuneInputError

REQUIRED = ("BLOCK_M", "BLOCK_N", "BLOCK_K")
DTYPES = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32"}


class ModelPrune:
    """The ``early_config_prune`` hook: keeps the ``budget`` configs the model ranks fastest.

    ``device`` is a device id of the store (default: the current GPU's); ``dtype`` defaults
    to the dtype of the first tensor argument. ``ranked`` records each key's ranking, for
    inspection.
    """

    def __init__(self, *, budget: int, sizes: Sequence[str] = ("M", "N", "K"),
                 device: str | None = None, dtype: str | None = None,
                 model: str | Path | None = None, db: str | Path | None = None):
        if budget < 1:
            raise PerftuneInputError(f"budget must be at least 1 (got {budget})")
        self.budget = budget
        self.sizes = tuple(sizes)
        self.device = device
        self.dtype = dtype
        self.model = model
        self.db = db
        self.ranked: dict[tuple[Any, ...], pd.DataFrame] = {}
        self._predictor: Any = None
        self._catalog: Any = None

    def __call__(self, configs: list[Any], nargs: dict[str, Any], **kwargs: Any) -> list[Any]:
        m, n, k = (int(nargs[name]) for name in self.sizes)
        dtype = self.dtype or _dtype_of(nargs)
        device = self.device or _current_device()
        predictor, catalog = self._load()
        rows = pd.DataFrame([_row(config, m, n, k, dtype, device) for config in configs])
        from perftune.model.features import with_config_columns

        predicted = predictor.predict(catalog, with_config_columns(rows))
        predicted["index"] = range(len(configs))
        order = predicted.sort_values("predicted_ms", kind="stable")
        self.ranked[(m, n, k, dtype, device)] = order
        return [configs[i] for i in order["index"].head(self.budget)]

    def _load(self) -> tuple[Any, Any]:
        if self._predictor is None:
            from perftune.model.runtime import Catalog, Predictor
            from perftune.store.db import Store

            self._predictor = Predictor.load(self.model)
            with Store(self.db, read_only=True) as store:
                self._catalog = Catalog.of(store)
        return self._predictor, self._catalog


def _row(config: Any, m: int, n: int, k: int, dtype: str, device: str) -> dict[str, Any]:
    params = dict(config.kwargs)
    missing = [name for name in REQUIRED if name not in params]
    if missing:
        raise PerftuneInputError(f"config {params} has no {', '.join(missing)}: perftune's "
                                 f"autotune ranks GEMM tile configs (BLOCK_M/N/K, optional "
                                 f"GROUP_M and SPLIT_K); use triton.autotune for other kernels")
    split = int(params.get("SPLIT_K", 1))
    values = {"BLOCK_M": params["BLOCK_M"], "BLOCK_N": params["BLOCK_N"],
              "BLOCK_K": params["BLOCK_K"], "GROUP_M": params.get("GROUP_M", 1),
              "num_warps": config.num_warps, "num_stages": config.num_stages}
    if split > 1:
        values["SPLIT_K"] = split
    return {"m": m, "n": n, "k": k, "dtype": dtype, "device_id": device,
            "dataflow": "triton_splitk" if split > 1 else "triton",
            "config": json.dumps({key: int(v) for key, v in sorted(values.items())})}


def _dtype_of(nargs: dict[str, Any]) -> str:
    for value in nargs.values():
        name = str(getattr(value, "dtype", "")).removeprefix("torch.")
        if name in DTYPES:
            return DTYPES[name]
    raise PerftuneInputError("no fp16/bf16/fp32 tensor argument to take the dtype from; "
                             "pass dtype='fp16' (or bf16, fp32) to autotune")


def _current_device() -> str:
    import torch

    from perftune.collect.device import gpu_device_id

    if not torch.cuda.is_available():
        raise PerftuneInputError("no GPU to rank configs for; pass device='<device id of the "
                                 "store>' (see `perftune db stats`)")
    return gpu_device_id(torch.cuda.get_device_name())


def autotune(configs: list[Any], key: list[str], *, budget: int = 8,
             sizes: Sequence[str] = ("M", "N", "K"), device: str | None = None,
             dtype: str | None = None, model: str | Path | None = None,
             db: str | Path | None = None, **triton_options: Any) -> Callable[[Any], Any]:
    """``triton.autotune(configs, key, ...)`` that times at most ``budget`` configs per key:
    the model's best. ``sizes`` names the kernel's M, N and K arguments; other keyword
    options (``do_bench``, ``warmup``, ``rep``, ``reset_to_zero``, ...) go to Triton."""
    if "prune_configs_by" in triton_options:
        raise PerftuneInputError("perftune's autotune prunes configs itself; drop "
                                 "prune_configs_by (or use triton.autotune)")
    prune = ModelPrune(budget=budget, sizes=sizes, device=device, dtype=dtype, model=model,
                       db=db)

    def decorate(fn: Any) -> Any:
        import triton

        tuned = triton.autotune(configs=configs, key=key,
                                prune_configs_by={"early_config_prune": prune},
                                **triton_options)(fn)
        tuned.perftune_prune = prune
        return tuned

    return decorate
