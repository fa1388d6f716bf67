"""Triton's ``Autotuner`` with perftune's ranking and persistence (imported only once Triton is;
see :func:`perftune.tune.autotune.autotune`)."""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import pandas as pd
from triton.runtime.autotuner import Autotuner, Config

from perftune.tune import _autotune_model
from perftune.tune._autotune_remote import records_for
from perftune.tune._autotune_store import KernelIdentity, canonical

CONFIG_FIELDS = ("num_warps", "num_stages", "num_ctas", "maxnreg")


def config_dict(config: Config) -> dict[str, Any]:
    """A config's parameters as one JSON-able dict (its kwargs and launch options)."""
    out = {name: _plain(value) for name, value in config.kwargs.items()}
    for name in CONFIG_FIELDS:
        value = getattr(config, name, None)
        if value is not None:
            out[name] = value
    return out


def _plain(value: Any) -> Any:
    return value if isinstance(value, bool | int | float | str) or value is None else str(value)


class PerftuneAutotuner(Autotuner):
    """``triton.runtime.autotuner.Autotuner`` (same key, hooks, benchmarking, per-key cache and
    ``best_config``) that, for a key it has not seen, first looks the choice up in the store,
    else ranks the configs (family model or the kernel's learned model) and times only the
    ``budget`` best, then stores the measurements and the choice.

    Two things make a new key cheaper than Triton's loop over the configs, which compiles them
    one after the other and times each with the full benchmark: the configs to be timed are
    compiled at once in ``compile_workers`` forked processes (Triton's async compile mode), and,
    given a ``screen`` benchmark, each is first timed briefly and only the fastest, with those
    of the next ``finalists - 1`` within ``tie_margin`` of it, are timed with the full one (a
    short benchmark tells a slow config from a fast one; only near-ties need the long one)."""

    def __init__(self, fn: Any, arg_names: list[str], configs: list[Config], key: list[str], *,
                 budget: int, family_prune: Callable[..., list[Config]] | None,
                 family_name: str | None, db: Any, min_keys: int, timer_name: str,
                 name: str | None, device: str | None, objective: str = "time",
                 energy_window_s: float = 0.25, screen: Callable[..., Any] | None = None,
                 quick_screen: Callable[..., Any] | None = None,
                 finalists: int = 3, tie_margin: float = 0.05,
                 compile_workers: int | None = None, compile_patience: float | None = None,
                 **options: Any):
        super().__init__(fn, arg_names, configs, key, **options)
        self.objective = objective
        self.energy_window_s = energy_window_s
        self._energy: dict[int, tuple[float, float]] = {}  # id(config) -> (ms, J per call)
        self._last_energy: tuple[float, float] | None = None
        if objective == "energy":
            self._use_bench(self._energy_bench(self.do_bench))
        self.screen = screen if finalists > 0 else None
        self.quick_screen = quick_screen
        self._quick_only: set[int] = set()  # id(config) of those only the quick run timed
        self.finalists = finalists
        self.tie_margin = tie_margin
        self.compile_workers = (_cores() if compile_workers is None else compile_workers)
        self.compile_patience = compile_patience
        self._stragglers: dict[int, Any] = {}  # id(config) -> its compile, still running
        self._compiling_ahead: set[int] = set()  # id(config) of those compiled for later keys
        self._ahead: list[Config] = []  # the configs ranked next after the budget
        self._left_out = 0  # configs of this key left out, their compile still running
        self._tuning = False
        self.compile_report: dict[str, Any] = {}  # the last new key's compiling at once
        self._screened: dict[int, tuple[Config, float | None]] = {}  # id(config) -> quick ms
        self._timed: set[int] = set()  # id(config) of every config timed for this key
        self._lone: int | None = None  # id(config) of the screen's lone finalist
        self._writing: Any = None  # the last key's records, being stored in the background
        self.budget = budget
        self.family_prune = family_prune
        self.family_name = family_name
        self.min_keys = min_keys
        self.timer_name = timer_name
        identity = KernelIdentity(kernel=name or self.base_fn.__name__,
                                  source_hash=source_hash(fn),
                                  device_id=device or current_device_id(),
                                  software_key=software_key())
        self.records = records_for(db, identity)
        self.configs_hash = hashlib.sha1(
            "|".join(canonical(config_dict(c)) for c in self.configs).encode()).hexdigest()
        self.benchmarks = 0  # configs timed by this process
        self.history: list[dict[str, Any]] = []  # per new key: how it was answered
        self._loaded = False
        self._records_loading: Any = None  # the store read started by prefetch()
        self._learning_imported = False  # the learned model's imports, started once
        self._choices: dict[str, dict[str, Any]] = {}
        self._measured = pd.DataFrame()
        self._ranked_by = "all"
        self._features: dict[int, dict[str, Any]] = {}
        self._phases: dict[str, float] = {}  # seconds this key spent per phase

    # -- the key ------------------------------------------------------------------------------
    def _tuning_key(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
        """Triton's key for these arguments (``Autotuner.run``'s)."""
        all_args = {**dict(zip(self.arg_names, args, strict=False)), **kwargs}
        named = {k: v for k, v in all_args.items() if k in self.arg_names}
        key = [named[k] for k in self.keys if k in named]
        key += [str(v.dtype) for v in named.values() if hasattr(v, "dtype")]
        return tuple(key)

    def _choice_key(self, tuning_key: tuple[Any, ...]) -> str:
        objective = "" if self.objective == "time" else f":{self.objective}"
        return self.records.identity.digest(_key_text(tuning_key), self.configs_hash + objective)

    def run(self, *args: Any, **kwargs: Any) -> Any:
        if len(self.configs) <= 1:
            return super().run(*args, **kwargs)
        key = self._tuning_key(args, kwargs)
        if key in self.cache:
            return super().run(*args, **kwargs)
        self._phases = {}
        if not self._loaded:
            with self._phase("lookup"):
                self._load_records()
        stored = self._choices.get(self._choice_key(key))
        config = self._config_of(stored["config"]) if stored else None
        if config is not None:
            self.cache[key] = config
            self.history.append({"key": _key_text(key), "measured": 0, "ranked_by": "stored"})
            return super().run(*args, **kwargs)
        self.configs_timings: dict[Config, Any] = {}
        self._ranked_by = "all"
        self._features = {}
        self._energy = {}
        self._screened = {}
        self._quick_only = set()
        self._timed = set()
        self._lone = None
        self._left_out = 0
        self._tuning = True
        started = time.perf_counter()
        try:
            result = super().run(*args, **kwargs)
        finally:
            self._tuning = False
        tuned = time.perf_counter() - started
        self._phases["full"] = tuned - sum(self._phases.get(name, 0.0)
                                           for name in ("rank", "compile", "screen"))
        with self._phase("store"):
            self._remember(key, args, kwargs, len(self._timed))
        self.history[-1]["phases"] = {name: round(s, 4) for name, s in self._phases.items()}
        return result

    def _load_records(self) -> None:
        if _on_gpu():
            from perftune.tune._compile import remember_triton_key

            remember_triton_key()
        loading, self._records_loading = self._records_loading, None
        self._choices, self._measured = (loading.result() if loading is not None
                                         else self.records.load())
        self._loaded = True

    @contextlib.contextmanager
    def _phase(self, name: str) -> Iterator[None]:
        """Add the time of the block to this key's ``name`` phase (``history[-1]["phases"]``:
        where a new key's first call spent its time)."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self._phases[name] = self._phases.get(name, 0.0) + time.perf_counter() - started

    def _config_of(self, text: str) -> Config | None:
        for config in self.configs:
            if canonical(config_dict(config)) == text:
                return config
        return None

    # -- ranking --------------------------------------------------------------------------------
    def prune_configs(self, kwargs: dict[str, Any]) -> list[Config]:
        """The configs Triton's loop then times in full: the user's ``prune_configs_by``
        (Triton's), perftune's ranking to ``budget``, compiled at once, then screened to the
        ``finalists`` (only while tuning a key: Triton's ``warmup`` prunes too)."""
        if not self._tuning:
            return self._ranked(kwargs)
        with self._phase("rank"):
            chosen = self._ranked(kwargs)
        if len(chosen) <= 1:
            return chosen
        with self._phase("compile"):
            chosen = self._precompile(self._compiled_or_waiting(chosen), kwargs)
        with self._phase("screen"):
            return self._screen(chosen, kwargs)

    def _ranked(self, kwargs: dict[str, Any]) -> list[Config]:
        pruned = list(super().prune_configs(kwargs))
        nargs = self.nargs or {}
        self._features = {id(c): self._derived(c, nargs, kwargs) for c in pruned}
        self._ahead = []
        if len(pruned) <= self.budget:
            return pruned
        if self.family_prune is not None:
            self._ranked_by = f"family:{self.family_name}"
            chosen = list(self.family_prune(pruned, nargs, **kwargs))
            ranking = list(getattr(self.family_prune, "last_ranking", None) or [])
            self._ahead = [c for c in ranking if c not in chosen][:self.budget]
            return chosen
        measured = self._measured
        if not measured.empty and self._target in measured:
            measured = measured[measured[self._target].notna()]
        if measured.empty or measured["tuning_key"].nunique() < self.min_keys:
            return pruned
        key_values = self._key_values(nargs, kwargs)
        candidates = [_autotune_model.feature_row(key_values, config_dict(c),
                                                  self._features[id(c)]) for c in pruned]
        order = _autotune_model.rank(measured, candidates, target=self._target)
        self._ranked_by = "learned"
        self._ahead = [pruned[i] for i in order[self.budget:2 * self.budget]]
        return [pruned[i] for i in order[:self.budget]]

    def prefetch(self) -> None:
        """On a GPU, start reading this kernel's records from the store in the background
        (see :mod:`._prefetch`): the first call takes them."""
        if not _on_gpu():
            return
        from perftune.tune import _prefetch

        self._records_loading = _prefetch.start(self.records.load)

    def _compiled_or_waiting(self, configs: list[Config]) -> list[Config]:
        """``configs`` less those whose slow compile, left running by an earlier key, still
        runs (all of them, waited for, if nothing else is left); a compile started ahead by an
        earlier key is waited for (it has had a head start)."""
        for straggler in self._stragglers.values():
            straggler.running()  # reaps the children done since: no zombies, no open pipes
        ready, waiting = [], []
        for config in configs:
            straggler = self._stragglers.get(id(config))
            if straggler is not None and id(config) in self._compiling_ahead:
                self._compiling_ahead.discard(id(config))
                self._stragglers.pop(id(config)).resolve()
                straggler = None
            if straggler is not None and straggler.running():
                waiting.append(config)
                continue
            if straggler is not None:
                self._stragglers.pop(id(config)).resolve()
            ready.append(config)
        if not ready:
            for config in waiting:
                self._stragglers.pop(id(config)).resolve()
            ready, waiting = waiting, []
        self._left_out = len(waiting)
        return ready

    def _precompile(self, configs: list[Config], kwargs: dict[str, Any]) -> list[Config]:
        """Compile ``configs`` on ``compile_workers`` forked processes (threads where fork is
        unavailable) before any is timed; those whose compile outlasts ``compile_patience``
        are left out of this key and compile on (a later key times them). Nothing to compile
        under the interpreter; a config that fails to compile fails again, as Triton reports
        it, when it is timed."""
        if self.compile_workers <= 1 or not _on_gpu():
            return configs
        from perftune.tune._compile import Patience, compile_at_once

        patience = (Patience(factor=self.compile_patience)
                    if self.compile_patience is not None else None)
        ahead = [c for c in self._ahead if id(c) not in self._stragglers]
        batch = compile_at_once(
            self.fn, tuple((self.nargs or {}).values()),
            [{**kwargs, **config.all_kwargs()} for config in configs + ahead],
            self.compile_workers, patience=patience,
            while_compiling=self._start_learning_import, ahead=len(ahead))
        self.compile_report = batch.report
        launched = configs + ahead
        for index, straggler in batch.stragglers.items():
            self._stragglers[id(launched[index])] = straggler
            if index >= len(configs):
                self._compiling_ahead.add(id(launched[index]))
        left = [i for i in batch.stragglers if i < len(configs)]
        self._left_out += len(left)
        return [c for i, c in enumerate(configs) if i not in left]

    def _screen(self, configs: list[Config], kwargs: dict[str, Any]) -> list[Config]:
        """The fastest of ``configs`` by the short ``screen`` benchmark, with those of the next
        ``finalists - 1`` it could not tell from it (within ``tie_margin``). Of more configs
        than ``budget``, a quicker run first keeps the ``budget`` fastest (a config many times
        slower than the best shows it in a few milliseconds)."""
        if self.screen is None or len(configs) <= self.finalists:
            return configs
        args = tuple((self.nargs or {}).values())
        first: dict[int, tuple[Config, float | None]] = {}
        keep = max(self.budget, 2 * self.finalists)
        if self.quick_screen is not None and len(configs) > keep:
            first = self._time_with(self.quick_screen, configs, args, kwargs)
            configs = sorted(configs, key=lambda c: _sort_ms(first[id(c)][1]))[:keep]
        quick = self._time_with(self.screen, configs, args, kwargs)
        self._screened = {**first, **quick}
        self._quick_only = set(first) - set(quick)
        order = sorted(configs, key=lambda c: _sort_ms(quick[id(c)][1]))
        fastest = _sort_ms(quick[id(order[0])][1])
        close = [c for c in order[:self.finalists]
                 if _sort_ms(quick[id(c)][1]) <= fastest * (1 + self.tie_margin)] or order[:1]
        if len(close) == 1 and math.isfinite(fastest):
            self._lone = id(close[0])  # nothing to tell it from: its screen time stands
        return close

    def _time_with(self, bench: Callable[..., Any], configs: list[Config],
                   args: tuple[Any, ...], kwargs: dict[str, Any]
                   ) -> dict[int, tuple[Config, float | None]]:
        """Each config's time by ``bench`` in place of the full benchmark."""
        full = self.do_bench
        self._use_bench(bench)
        try:
            return {id(c): (c, _first(self._bench(*args, config=c, **kwargs))) for c in configs}
        finally:
            self._use_bench(full)

    def _use_bench(self, bench: Callable[..., Any]) -> None:
        """Time with ``bench`` from now on (Triton's ``do_bench`` is a cached property in some
        versions and a plain property in others: set what both read)."""
        self._do_bench = bench
        self.__dict__.pop("do_bench", None)

    def _key_values(self, nargs: dict[str, Any], kwargs: dict[str, Any]) -> dict[str, Any]:
        named = {**nargs, **kwargs}
        return {k: _plain(named[k]) for k in self.keys if k in named}

    def _derived(self, config: Config, nargs: dict[str, Any], kwargs: dict[str, Any]
                 ) -> dict[str, Any]:
        """Programs of the launch grid for ``config``, and programs per SM."""
        grid = kwargs.get("grid")
        try:
            if callable(grid):
                grid = grid({**nargs, **kwargs, **config.all_kwargs()})
            dims = [int(g) for g in (grid if isinstance(grid, tuple | list) else (grid,))]
        except Exception:  # a grid we cannot evaluate: no grid features
            return {}
        programs = math.prod(dims)
        return {"programs": programs, "programs_per_sm": programs / sm_count()}

    def _ready_to_learn(self) -> None:
        """One key before the learned model first ranks, start importing what it needs (if
        no compile wait has started it yet)."""
        if self._measured["tuning_key"].nunique() >= self.min_keys - 1:
            self._start_learning_import()

    def _start_learning_import(self) -> None:
        """Start importing, in the background, what the learned model will need, for a
        kernel that will rank by it: called while a key's configs compile (the process
        would only wait), or one key before the model first ranks, so that no key waits
        for the import."""
        if (self.family_prune is None and len(self.configs) > self.budget
                and not self._learning_imported and _on_gpu()):
            from perftune.tune import _prefetch

            _prefetch.start(_prefetch.import_learning)
            self._learning_imported = True

    def _screen_timer(self, config_id: int) -> str:
        """The timer a screened-only measurement is stored with."""
        return f"{self.timer_name}:{'quick' if config_id in self._quick_only else 'screen'}"

    @property
    def _target(self) -> str:
        return "energy_per_call_j" if self.objective == "energy" else "runtime_ms"

    # -- timing and storing ---------------------------------------------------------------------
    def _bench(self, *args: Any, config: Config, **meta: Any) -> Any:
        if self._tuning and id(config) == self._lone:
            return [self._screened[id(config)][1]] * 3  # Triton's quantiles (0.5, 0.2, 0.8)
        self.benchmarks += 1
        self._timed.add(id(config))
        self._last_energy = None
        timings = super()._bench(*args, config=config, **meta)
        if self._last_energy is not None:
            self._energy[id(config)] = self._last_energy
        return timings

    def _energy_bench(self, base: Callable[..., Any]) -> Callable[..., Any]:
        """``base`` (the timer) followed by NVML energy per call over ``energy_window_s``, the
        GPU kept busy; it returns the energy (mJ), which the autotuner then minimises."""
        import torch

        from perftune.collect.power.nvml import NVMLObserver, measure_energy

        observer = NVMLObserver(torch.cuda.current_device())

        def bench(kernel_call: Callable[[], None], quantiles: Any = None, **kw: Any) -> Any:
            timings = base(kernel_call, quantiles=quantiles, **kw)
            ms = float(timings[0] if isinstance(timings, list | tuple) else timings)
            if not math.isfinite(ms):
                return timings
            measured = measure_energy(kernel_call, observer, call_ms=ms,
                                      window_s=self.energy_window_s)
            joules = float(measured["energy_per_call_j"])
            self._last_energy = (ms, joules)
            millijoules = joules * 1e3
            return ([millijoules] * len(timings) if isinstance(timings, list | tuple)
                    else millijoules)

        return bench

    def _remember(self, key: tuple[Any, ...], args: tuple[Any, ...], kwargs: dict[str, Any],
                  measured: int) -> None:
        nargs = dict(zip(self.arg_names, args, strict=False))
        key_text = _key_text(key)
        key_values = canonical(self._key_values(nargs, kwargs))
        rows = []
        measured_ms: dict[int, float | None] = {}
        timed = {id(c): (c, t, self.timer_name)
                 for c, t in (getattr(self, "configs_timings", None) or {}).items()
                 if id(c) != self._lone}
        screened = {i: (c, t, self._screen_timer(i))
                    for i, (c, t) in self._screened.items() if i not in timed}
        for config, timing, timer in [*timed.values(), *screened.values()]:
            ms, joules = self._energy.get(id(config), (_first(timing), None))
            measured_ms[id(config)] = ms if ms is not None and math.isfinite(ms) else None
            cfg = canonical(config_dict(config))
            parts = (key_text, cfg) if self.objective == "time" else (key_text, cfg, "energy")
            rows.append({"key": self.records.identity.digest(*parts),
                         "tuning_key": key_text, "key_values": key_values, "config": cfg,
                         "features": json.dumps(self._features.get(id(config), {})),
                         "runtime_ms": measured_ms[id(config)], "energy_per_call_j": joules,
                         "timer": timer})
        best = self.cache[key]
        best_ms = measured_ms.get(id(best))
        best_energy = self._energy.get(id(best), (None, None))[1]
        choice_key = self._choice_key(key)
        choice: dict[str, Any] = {"key": choice_key, "tuning_key": key_text,
                  "config": canonical(config_dict(best)),
                  "runtime_ms": float(best_ms) if best_ms is not None else None,
                  "energy_per_call_j": best_energy, "objective": self.objective,
                  "configs": len(self.configs), "measured": measured,
                  "ranked_by": self._ranked_by}
        if rows:
            self._measured = pd.concat([self._measured, pd.DataFrame(rows)], ignore_index=True)
            self._ready_to_learn()
        self._choices[choice_key] = choice
        self._store_later(rows, choice)
        self.history.append({"key": key_text, "measured": measured,
                             "timed_in_full": len(timed), "ranked_by": self._ranked_by,
                             "left_out": self._left_out})

    def _store_later(self, rows: list[dict[str, Any]], choice: dict[str, Any]) -> None:
        """Store a key's records in the background, after the previous key's: a write opens
        the store and checkpoints it (a tenth of a second), which the call need not wait
        for. Pending writes are waited for before any fork, by :meth:`flush` and at exit."""
        from perftune.tune import _prefetch

        previous = self._writing

        def write() -> None:
            if previous is not None:
                previous.join()
            self.records.record(rows, choice)

        self._writing = _prefetch.start(write)

    def flush(self) -> None:
        """Wait until every key's records are stored."""
        if self._writing is not None:
            self._writing.join()


def _first(timing: Any) -> float | None:
    value = timing[0] if isinstance(timing, list | tuple) else timing
    return None if value is None else float(value)


def _sort_ms(ms: float | None) -> float:
    return ms if ms is not None and math.isfinite(ms) else math.inf


def _key_text(key: tuple[Any, ...]) -> str:
    return json.dumps([_plain(v) for v in key])


def source_hash(fn: Any) -> str:
    """A hash of the kernel's source (on a GPU, Triton's own hash of it and of the jitted
    functions it calls)."""
    base = fn
    while not inspect.isfunction(base):
        base = base.fn
    parts = [inspect.getsource(base)]
    jitted = fn
    while hasattr(jitted, "fn") and not hasattr(jitted, "cache_key"):
        jitted = jitted.fn
    with contextlib.suppress(Exception):  # the interpreter's functions have no cache key
        parts.append(str(jitted.cache_key))
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity on this platform
        return os.cpu_count() or 1


def _on_gpu() -> bool:
    import os

    import torch

    return torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET", "0") in ("", "0")


def current_device_id() -> str:
    from perftune.collect.device import INTERPRETER_DEVICE_ID, gpu_device_id

    if not _on_gpu():
        return INTERPRETER_DEVICE_ID
    import torch

    return gpu_device_id(torch.cuda.get_device_name())


def sm_count() -> int:
    if not _on_gpu():
        return 1
    import torch

    return int(torch.cuda.get_device_properties(0).multi_processor_count)


def software_key() -> str:
    import torch
    import triton

    from perftune.store.keys import software_key as key

    return key(torch.__version__, triton.__version__, torch.version.cuda, None)


SCREEN_WARMUP_MS, SCREEN_REP_MS = 5, 15  # Triton's do_bench defaults: 25, 100
QUICK_WARMUP_MS, QUICK_REP_MS = 1, 4  # the first screen of more configs than the budget
SCREEN_TARGET_MS, QUICK_TARGET_MS = 3.0, 1.0  # perftune's timer: 20 ms by default


def screen_do_bench(timer: str, *, quick: bool = False) -> Callable[..., Any]:
    """The short benchmark that screens configs: the ``timer``'s benchmark (``"triton"``:
    Triton's do_bench; ``"perftune"``: perftune's timer) over a fraction of its usual time
    (``quick``: a smaller one still)."""
    if timer == "perftune":
        return perftune_do_bench(target_ms=QUICK_TARGET_MS if quick else SCREEN_TARGET_MS)[0]
    warmup, rep = (QUICK_WARMUP_MS, QUICK_REP_MS) if quick else (SCREEN_WARMUP_MS, SCREEN_REP_MS)

    def do_bench(kernel_call: Callable[[], None], quantiles: Any = None, **_: Any) -> Any:
        import triton.testing

        return triton.testing.do_bench(kernel_call, warmup=warmup, rep=rep, quantiles=quantiles)

    return do_bench


def perftune_do_bench(target_ms: float | None = None) -> tuple[Callable[..., float], str]:
    """perftune's timer as a ``do_bench``: CUDA events on a GPU, wall clock otherwise (over
    ``target_ms`` per round when given)."""
    from perftune.collect.timers import timer_for

    timer = timer_for(_on_gpu())
    if target_ms is not None:
        timer.target_ms = target_ms
        timer.min_reps = min(timer.min_reps, 3)

    def do_bench(kernel_call: Callable[[], None], quantiles: Any = None, **_: Any) -> float:
        return timer.time(kernel_call).median_ms

    return do_bench, f"perftune:{timer.name}"
