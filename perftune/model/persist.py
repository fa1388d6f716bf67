"""Saving and loading models safely: skops files (no pickle), with what they were trained on.

A saved model records its format version, family, feature list, the devices and data snapshot
it was trained on. Loading refuses files that are not perftune models, are corrupt, come from
a newer format, or contain types outside an allow-list (nothing is unpickled). A forest's
trees are also saved beside it as plain arrays (:mod:`perftune.model.trees`), which
:func:`load_flat` reads without importing scikit-learn or skops.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

from perftune.errors import PerftuneInputError

FORMAT = "perftune-model"
FORMAT_VERSION = 4  # 2: log ratio to the roofline; 3: a forest per part; 4: any family
# Types skops does not trust by itself that a perftune model file holds: its estimator classes
# and scikit-learn's tree structure. Exact names, never a module prefix: a prefix such as
# ``builtins.`` would let a crafted file call ``builtins.exec`` while loading.
_SKLEARN_TYPES = frozenset({"sklearn.tree._tree.Tree"})


def trusted_types() -> frozenset[str]:
    """The exact type names a model file may hold beyond skops' own safe defaults."""
    from perftune.model.registry import estimator_classes

    return _SKLEARN_TYPES | {f"{cls.__module__}.{cls.__qualname__}"
                             for cls in estimator_classes()}


def save_model(path: str | Path, model: Any, meta: dict[str, Any]) -> Path:
    """Write ``model`` and ``meta`` to ``path`` and, for a forest, its flat trees beside it."""
    import skops.io as sio

    from perftune.model.trees import sidecar_path

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, "meta": meta, "model": model}
    tmp = target.with_suffix(target.suffix + ".tmp")
    sio.dump(payload, tmp)
    sidecar = sidecar_path(target)
    sidecar.unlink(missing_ok=True)  # trees of an earlier model must not outlive it
    tmp.replace(target)  # never leave a half-written model under the real name
    if hasattr(model, "predictor"):
        model.predictor(flat=True).save(sidecar, meta, source=target)
    return target


def load_flat(path: str | Path) -> tuple[Any, dict[str, Any]] | None:
    """The forest saved at ``path`` as flat trees (a
    :class:`~perftune.model.trees.ForestPredictor`) and its meta, read from the file beside it
    without scikit-learn; None where there is no such file for the model as it is now (not a
    forest, saved by an older perftune, or replaced since): then load it with
    :func:`load_model`."""
    from perftune.model.trees import ForestPredictor, sidecar_path

    sidecar = sidecar_path(path)
    if not sidecar.is_file() or not Path(path).is_file():
        return None
    try:
        return ForestPredictor.load(sidecar, source=path)
    except (ValueError, KeyError, TypeError, OSError, EOFError):
        return None  # stale, corrupt or crafted: the model file itself is the truth


def load_model(path: str | Path) -> tuple[Any, dict[str, Any]]:
    source = Path(path)
    if not source.is_file():
        raise PerftuneInputError(f"no model file at {source}; train one with `perftune fit`")
    import skops.io as sio

    if not zipfile.is_zipfile(source):
        raise PerftuneInputError(f"{source} is not a perftune model file (corrupt or another "
                                 f"format); retrain with `perftune fit`")
    try:
        untrusted = sio.get_untrusted_types(file=source)
    except Exception as exc:
        raise PerftuneInputError(f"{source} is corrupt ({exc}); retrain with `perftune fit`")\
            from None
    refused = sorted(set(untrusted) - trusted_types())
    if refused:
        raise PerftuneInputError(f"{source} holds types perftune will not load: {refused}; "
                                 f"only perftune's own model files are loaded")
    try:
        payload = sio.load(source, trusted=untrusted)
    except Exception as exc:
        raise PerftuneInputError(f"{source} is corrupt ({exc}); retrain with `perftune fit`")\
            from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise PerftuneInputError(f"{source} is not a perftune model file")
    version = int(payload.get("format_version", 0))
    if version > FORMAT_VERSION:
        raise PerftuneInputError(
            f"{source} is model format {version}, newer than this perftune reads "
            f"({FORMAT_VERSION}); upgrade perftune or retrain")
    if version < FORMAT_VERSION:
        raise PerftuneInputError(
            f"{source} is model format {version}, older than this perftune reads "
            f"({FORMAT_VERSION}); retrain it with `perftune fit`")
    return payload["model"], payload["meta"]
