"""``perftune.tune.autotune.autotune``: a drop-in for ``triton.autotune`` on any ``@triton.jit``
kernel, that times only the configs a model ranks best and remembers its choices.

    from perftune.tune.autotune import autotune

    @autotune(configs=[triton.Config({"BLOCK": 256}, num_warps=4), ...], key=["n"], budget=8)
    @triton.jit
    def axpy_kernel(x_ptr, y_ptr, out_ptr, a, n, BLOCK: tl.constexpr): ...

It is Triton's ``Autotuner`` (same key, per-key cache, hooks, ``reset_to_zero``,
``restore_value``, ``prune_configs_by``, ``do_bench``, ``best_config``) with three additions:

- A kernel of a registered family (``family="gemm"``, ``"rmsnorm"``, ``"decode_attention"``;
  a GEMM is recognised by its ``BLOCK_M/N/K`` configs and ``M, N, K`` arguments) has its
  configs ranked by the family's runtime model; only the ``budget`` best are timed.
- Any other kernel learns from its own measurements: once ``min_keys`` keys are measured, a
  small forest on key values, config parameters and grid features ranks a new key's configs
  and only the ``budget`` best are timed; before that, all of them are.
- Every measurement and choice goes to the store (``autotune_measurements``,
  ``autotune_choices``), per kernel source hash, device and software versions: another process
  with the same kernel, key, device and versions times nothing.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from perftune.errors import PerftuneInputError

REQUIRED = ("BLOCK_M", "BLOCK_N", "BLOCK_K")
DTYPES = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32"}


class ModelPrune:
    """Keeps the ``budget`` configs the family's runtime model ranks fastest.

    ``sizes`` names the kernel arguments holding the family's sizes, in the family's order
    (GEMM: ``M, N, K``) or as a mapping from the family's size names to argument names.
    ``device`` is a device id of the store (default: the current GPU's); ``dtype`` defaults
    to the dtype of the first tensor argument. ``ranked`` records each key's ranking, for
    inspection.
    """

    def __init__(self, *, budget: int, sizes: Sequence[str] | Mapping[str, str] | None = None,
                 device: str | None = None, dtype: str | None = None,
                 model: str | Path | None = None, db: str | Path | None = None,
                 family: str = "gemm"):
        if budget < 1:
            raise PerftuneInputError(f"budget must be at least 1 (got {budget})")
        from perftune.collect.families import load_family

        self.family = load_family(family)
        dims = tuple(self.family.dims)
        if sizes is None:
            sizes = ("M", "N", "K") if self.family.name == "gemm" else dims
        if isinstance(sizes, Mapping):
            missing = [d for d in dims if d not in sizes]
            if missing:
                raise PerftuneInputError(f"sizes has no argument for {', '.join(missing)} of "
                                         f"{self.family.name}")
            sizes = [sizes[d] for d in dims]
        if len(sizes) != len(dims):
            raise PerftuneInputError(f"sizes names {len(sizes)} arguments; {self.family.name} "
                                     f"has {len(dims)} sizes ({', '.join(dims)})")
        self.budget = budget
        self.sizes = tuple(sizes)
        self.device = device
        self.dtype = dtype
        self.model = model
        self.db = db
        self.ranked: dict[tuple[Any, ...], pd.DataFrame] = {}
        self.last_ranking: list[Any] = []
        self._predictor: Any = None
        self._catalog: Any = None

    def __call__(self, configs: list[Any], nargs: dict[str, Any], **kwargs: Any) -> list[Any]:
        named = {**nargs, **kwargs}
        values = tuple(int(named[name]) for name in self.sizes)
        dtype = self.dtype or _dtype_of(nargs)
        device = self.device or _current_device()
        predictor, catalog = self._load()
        from perftune.model.features import with_config_columns

        if self.family.name == "gemm":
            m, n, k = values
            rows = pd.DataFrame([_row(config, m, n, k, dtype, device) for config in configs])
            frame = with_config_columns(rows)
        else:
            rows, params = self._family_rows(configs, values, dtype, device)
            frame = with_config_columns(rows, params)
        predicted = predictor.predict(catalog, frame)
        predicted["index"] = range(len(configs))
        order = predicted.sort_values("predicted_ms", kind="stable")
        self.ranked[(*values, dtype, device)] = order
        self.last_ranking = [configs[i] for i in order["index"]]  # all, best first
        return self.last_ranking[:self.budget]

    def _family_rows(self, configs: list[Any], values: tuple[int, ...], dtype: str,
                     device: str) -> tuple[pd.DataFrame, list[str]]:
        """Rows of another family: its sizes, its tuned dataflow and the config's parameters
        of that dataflow's space, read by name."""
        from perftune.model.runtime import tuned_dataflows

        dataflow = next(d for d in tuned_dataflows(self.family) if self.family.space(d))
        params = list(self.family.space(dataflow))
        rows = []
        for config in configs:
            given = {**config.kwargs, "num_warps": config.num_warps,
                     "num_stages": config.num_stages}
            missing = [p for p in params if p not in given]
            if missing:
                raise PerftuneInputError(f"config {config.kwargs} has no {', '.join(missing)}: "
                                         f"the {self.family.name} model ranks "
                                         f"{', '.join(params)}")
            rows.append({**dict(zip(self.family.dims, values, strict=True)), "dtype": dtype,
                         "device_id": device, "dataflow": dataflow,
                         "config": json.dumps({p: int(given[p]) for p in sorted(params)})})
        return pd.DataFrame(rows), params

    def _load(self) -> tuple[Any, Any]:
        if self._predictor is None:
            from perftune.model.runtime import Catalog, Predictor
            from perftune.store.db import Store

            with Store(self.db, read_only=True) as store:
                # flat trees: a first call should not wait seconds for scikit-learn's import
                if self.family.name == "gemm":
                    self._predictor = Predictor.load(self.model, flat=True)
                else:
                    self._predictor = Predictor.load_or_train(
                        self.model, store, lambda _: None, family=self.family.name, flat=True)
                self._catalog = Catalog.of(store, self.family.name)
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


TRITON_OPTIONS = ("reset_to_zero", "restore_value", "pre_hook", "post_hook", "warmup", "rep",
                  "use_cuda_graph", "do_bench", "cache_results")


def autotune(configs: list[Any], key: list[str], prune_configs_by: dict[str, Any] | None = None,
             reset_to_zero: list[str] | None = None, restore_value: list[str] | None = None,
             pre_hook: Callable[..., Any] | None = None,
             post_hook: Callable[..., Any] | None = None, warmup: int | None = None,
             rep: int | None = None, use_cuda_graph: bool = False,
             do_bench: Callable[..., Any] | None = None, cache_results: bool = False, *,
             budget: int = 8, family: str | bool | None = None,
             sizes: Sequence[str] | Mapping[str, str] | None = None,
             device: str | None = None, dtype: str | None = None,
             model: str | Path | None = None, db: str | Path | None = None,
             timer: str = "triton", min_keys: int = 4, name: str | None = None,
             objective: str = "time", energy_window_s: float = 0.25, finalists: int = 3,
             tie_margin: float = 0.05, compile_workers: int | None = None,
             compile_patience: float | None = 3.0) -> Callable[[Any], Any]:
    """``triton.autotune(configs, key, ...)`` (same arguments, same meaning) that times at most
    ``budget`` configs for a new key once a model can rank them, and stores what it measured
    and chose.

    ``family``: ``"gemm"``, ``"rmsnorm"``, ``"decode_attention"`` (or a plugin's reference):
    rank with that family's runtime model, reading its sizes from the arguments ``sizes``
    names (the family's order, or a mapping from its size names to argument names). Default:
    GEMM when every config has ``BLOCK_M/N/K`` and the kernel has ``M, N, K`` arguments, else
    none (``family=False`` forces none): the kernel's own measurements train its model once
    ``min_keys`` keys are measured. ``device``, ``dtype``, ``model``: the family model's device
    id, dtype and file. ``db``: the store (default: the user's). ``timer``: ``"triton"``
    (Triton's benchmarker, as ``triton.autotune``) or ``"perftune"`` (perftune's timer); an
    explicit ``do_bench`` wins. ``name``: the kernel's name in the store (default: the
    function's). ``objective``: ``"time"``, or ``"energy"``: each timed config's energy per call
    is measured through NVML over ``energy_window_s`` (the GPU kept busy) and the config of
    least energy is picked; the learned model ranks by energy too (a family's model ranks by
    time). Energy needs an NVIDIA GPU.

    ``finalists``: a new key's configs (the ``budget`` best, or all while the kernel's model
    learns) are first timed by a short run of the timer's benchmark (Triton's do_bench over
    5 + 15 ms instead of 25 + 100 ms; perftune's timer over 3 ms a round). The fastest, and
    those of the next ``finalists - 1`` that screened within ``tie_margin`` (a fraction) of it,
    are timed in full and compared, as ``triton.autotune`` compares all; ``finalists=0`` times
    every config in full. Screening needs a benchmark perftune can shorten: it is off with an
    explicit ``do_bench``, ``warmup``/``rep``, ``use_cuda_graph`` or ``objective="energy"``.
    ``compile_workers``: processes (forked; threads where fork is unavailable) that compile a
    new key's configs at once before any is timed (default: one per core; ``1``: one at a
    time, as Triton does). ``compile_patience``: once half of those configs are compiled (now,
    or for an earlier key), the key waits until this many times as long as that took (at
    least 1 s); configs still compiling then are left out of this key and compile on in the
    background, for a later key (``None``: wait for every compile).

    On a GPU, decorating starts reading the kernel's records from the store in a background
    thread, so that the first call finds them read."""
    if budget < 1:
        raise PerftuneInputError(f"budget must be at least 1 (got {budget})")
    if min_keys < 1:
        raise PerftuneInputError(f"min_keys must be at least 1 (got {min_keys})")
    if timer not in ("triton", "perftune"):
        raise PerftuneInputError(f"timer must be 'triton' or 'perftune' (got {timer!r})")
    if objective not in ("time", "energy"):
        raise PerftuneInputError(f"objective must be 'time' or 'energy' (got {objective!r})")
    if objective == "energy":
        _check_energy(energy_window_s)
    if finalists < 0:
        raise PerftuneInputError(f"finalists must be 0 (time every config in full) or more "
                                 f"(got {finalists})")
    if not 0 <= tie_margin < 1:
        raise PerftuneInputError(f"tie_margin must be a fraction in [0, 1): how much slower than "
                                 f"the fastest a screened config may be and still be timed in "
                                 f"full (got {tie_margin})")
    if compile_workers is not None and compile_workers < 1:
        raise PerftuneInputError(f"compile_workers must be at least 1 (got {compile_workers})")
    if compile_patience is not None and not compile_patience >= 1:
        raise PerftuneInputError(f"compile_patience must be at least 1 (times as long as half "
                                 f"the compiles took), or None to wait for every compile (got "
                                 f"{compile_patience})")
    options = {"reset_to_zero": reset_to_zero, "restore_value": restore_value,
               "pre_hook": pre_hook, "post_hook": post_hook, "warmup": warmup, "rep": rep,
               "use_cuda_graph": use_cuda_graph, "do_bench": do_bench,
               "cache_results": cache_results, "prune_configs_by": prune_configs_by}

    def decorate(fn: Any) -> Any:
        from perftune.tune._autotuner import (
            PerftuneAutotuner,
            perftune_do_bench,
            screen_do_bench,
        )

        chosen = _family_of(family, configs, list(fn.arg_names))
        prune = None
        if chosen is not None:
            prune = ModelPrune(budget=budget, sizes=sizes, device=device, dtype=dtype,
                               model=model, db=db, family=chosen)
        timer_name = "custom" if do_bench is not None else "triton_do_bench"
        if do_bench is None and timer == "perftune":
            options["do_bench"], timer_name = perftune_do_bench()
        shortened = (do_bench is None and warmup is None and rep is None and not use_cuda_graph
                     and objective == "time")
        screen = screen_do_bench(timer) if shortened and finalists > 0 else None
        quick_screen = screen_do_bench(timer, quick=True) if screen is not None else None
        tuned = PerftuneAutotuner(fn, list(fn.arg_names), configs, key, budget=budget,
                                  family_prune=prune, family_name=chosen, db=db,
                                  min_keys=min_keys, timer_name=timer_name, name=name,
                                  device=None, objective=objective,
                                  energy_window_s=energy_window_s, screen=screen,
                                  quick_screen=quick_screen,
                                  finalists=finalists, tie_margin=tie_margin,
                                  compile_workers=compile_workers,
                                  compile_patience=compile_patience, **options)
        tuned.perftune_prune = prune
        tuned.prefetch()
        return tuned

    return decorate


def _check_energy(window_s: float) -> None:
    """Energy per call is read from NVML's energy counter: a GPU, and a window in which the
    counter ticks (about every 100 ms)."""
    from perftune.tune._autotuner import _on_gpu

    if not _on_gpu():
        raise PerftuneInputError("objective='energy' measures energy per call through NVML and "
                                 "needs an NVIDIA GPU (none is in use: no CUDA, or the Triton "
                                 "interpreter); use objective='time' here")
    if not window_s >= 0.1:
        raise PerftuneInputError(f"energy_window_s must be at least 0.1 s, the NVML energy "
                                 f"counter's update period (got {window_s})")


def _family_of(family: str | bool | None, configs: list[Any], arg_names: list[str]
               ) -> str | None:
    if family is False:
        return None
    if isinstance(family, str):
        return family
    gemm_configs = bool(configs) and all(
        all(name in getattr(c, "kwargs", {}) for name in REQUIRED) for c in configs)
    return "gemm" if gemm_configs and {"M", "N", "K"} <= set(arg_names) else None
