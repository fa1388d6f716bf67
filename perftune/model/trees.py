"""A fitted forest's predictions without scikit-learn: its trees as flat arrays, and the
prediction logic of :class:`perftune.model.forest.RuntimeForest` over any trees.

scikit-learn (and skops, which reads model files) take seconds to import; a process that only
ranks a few configs, such as the ``autotune`` decorator's first call, would spend more on the
import than on everything else. A forest saved by :func:`perftune.model.persist.save_model`
therefore also gets a ``.trees.npz`` file beside it: plain arrays (loaded without pickle) that
predict exactly what the forest predicts. Over many rows at once scikit-learn's compiled
traversal is faster, so long-lived readers (the service) keep loading the forest itself.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeAlias

import numpy as np

Features: TypeAlias = "Mapping[str, Any]"  # a frame, or arrays by name

SIDECAR_SUFFIX = ".trees.npz"
SIDECAR_FORMAT = 1
IDENTITY_TAIL = 1 << 16


class TreeSet(Protocol):
    """Regression trees that predict together (a forest's estimators)."""

    def mean_and_spread(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per row of ``x``: the mean and the standard deviation of the trees' predictions."""
        ...


@dataclass(frozen=True)
class FlatTrees:
    """Trees as one set of node arrays: ``left``/``right`` child (-1 at a leaf, indices into
    the same arrays), split ``feature`` and ``threshold``, leaf ``value``, and each tree's
    root. A row goes left where ``x[feature] <= threshold``, with ``x`` rounded to float32
    first, as scikit-learn's trees do."""

    roots: np.ndarray
    left: np.ndarray
    right: np.ndarray
    feature: np.ndarray
    threshold: np.ndarray
    value: np.ndarray

    @classmethod
    def of(cls, estimators: list[Any]) -> FlatTrees:
        """The trees of scikit-learn regression trees (``forest.estimators_``)."""
        roots, left, right, feature, threshold, value = [], [], [], [], [], []
        offset = 0
        for estimator in estimators:
            tree = estimator.tree_
            leaf = tree.children_left < 0
            roots.append(offset)
            left.append(np.where(leaf, -1, tree.children_left + offset))
            right.append(np.where(leaf, -1, tree.children_right + offset))
            feature.append(np.where(leaf, 0, tree.feature))
            threshold.append(tree.threshold)
            value.append(tree.value[:, 0, 0])
            offset += tree.node_count
        return cls(np.asarray(roots, np.int64), np.concatenate(left).astype(np.int32),
                   np.concatenate(right).astype(np.int32),
                   np.concatenate(feature).astype(np.int32),
                   np.concatenate(threshold).astype(np.float64),
                   np.concatenate(value).astype(np.float64))

    def predictions(self, x: np.ndarray) -> np.ndarray:
        """Every tree's prediction for every row of ``x``: shape (trees, rows)."""
        x = np.asarray(x, dtype=np.float32).astype(np.float64)
        node = np.repeat(self.roots[:, None], len(x), axis=1)
        rows = np.arange(len(x))[None, :]
        for _ in range(len(self.left)):  # a child's index exceeds its parent's: this ends
            left = self.left[node]
            inner = left >= 0
            if not inner.any():
                break
            goes_left = x[rows, self.feature[node]] <= self.threshold[node]
            node = np.where(inner, np.where(goes_left, left, self.right[node]), node)
        return self.value[node]

    def mean_and_spread(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        per_tree = self.predictions(x)
        return per_tree.mean(axis=0), per_tree.std(axis=0)

    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        return {f"{prefix}.{name}": getattr(self, name) for name in _TREE_FIELDS}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], prefix: str,
                    features: int) -> FlatTrees:
        """The trees saved by :meth:`arrays`, checked to be trees (every child after its
        parent, every index in range): a crafted file cannot make prediction loop or read
        out of bounds."""
        trees = cls(*(np.asarray(arrays[f"{prefix}.{name}"]) for name in _TREE_FIELDS))
        nodes = len(trees.left)
        parts = (trees.right, trees.feature, trees.threshold, trees.value)
        if any(len(part) != nodes for part in parts) or not len(trees.roots):
            raise ValueError(f"{prefix}: node arrays of different lengths")
        inner = trees.left >= 0
        index = np.arange(nodes)
        if ((trees.roots < 0) | (trees.roots >= nodes)).any() or \
                (inner & ((trees.left <= index) | (trees.right <= index) |
                          (trees.left >= nodes) | (trees.right >= nodes))).any() or \
                ((trees.right >= 0) != inner).any() or \
                (inner & ((trees.feature < 0) | (trees.feature >= features))).any():
            raise ValueError(f"{prefix}: not a tree")
        return trees


_TREE_FIELDS = ("roots", "left", "right", "feature", "threshold", "value")


@dataclass(frozen=True)
class ForestPredictor:
    """What a fitted :class:`~perftune.model.forest.RuntimeForest` predicts, from its trees:
    each row from its part's forest (``separate``: a 0/1 feature choosing it; a part no
    training row had goes to the largest), corrected by its device's adapter, plus the
    ``residual_of`` baseline; the spread across trees, scaled per part, gives the interval."""

    feature_names: tuple[str, ...]
    residual_of: str | None
    separate: str | None
    forests: Mapping[float, TreeSet]
    interval_scales: Mapping[float, float]
    part_rows: Mapping[float, int]
    adapters: Mapping[str, TreeSet]

    def predict(self, features: Features, devices: Any = None) -> np.ndarray:
        """Predicted value (runtime in ms for a runtime forest)."""
        return np.exp(self.predict_log(features, devices)[0])

    def predict_log(self, features: Features, devices: Any = None
                    ) -> tuple[np.ndarray, np.ndarray]:
        """Mean and spread (std across trees) of the predicted log value."""
        mean, spread, _ = self.predict_parts(features, devices)
        return mean, spread

    def predict_interval(self, features: Features, devices: Any = None
                         ) -> tuple[np.ndarray, np.ndarray]:
        return self.predict_with_interval(features, devices)[1:]

    def predict_with_interval(self, features: Features, devices: Any = None
                              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The value and its calibrated interval's bounds, from one pass over the trees."""
        mean, spread, scale = self.predict_parts(features, devices)
        half = scale * np.maximum(spread, 1e-3)
        return np.exp(mean), np.exp(mean - half), np.exp(mean + half)

    def predict_parts(self, features: Features, devices: Any = None
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Log mean, spread and interval scale per row."""
        x = self.matrix(features)
        mean, spread, scale = np.zeros(len(x)), np.zeros(len(x)), np.zeros(len(x))
        for part, rows in self._rows_by_forest(features, len(x)):
            mean[rows], spread[rows] = self.forests[part].mean_and_spread(x[rows])
            scale[rows] = self.interval_scales[part]
        if devices is not None and self.adapters:
            ids = np.broadcast_to(np.asarray(devices).astype(str), (len(x),))
            for device, adapter in self.adapters.items():
                rows = ids == device
                if rows.any():
                    mean[rows] += adapter.mean_and_spread(x[rows])[0]
        return mean + log_baseline(features, self.residual_of), spread, scale

    def matrix(self, features: Features) -> np.ndarray:
        return np.column_stack([np.asarray(features[name], dtype=float)
                                for name in self.feature_names])

    def _rows_by_forest(self, features: Features, rows: int) -> list[tuple[float, np.ndarray]]:
        parts = (np.zeros(rows) if self.separate is None
                 else np.asarray(features[self.separate], dtype=float))
        fallback = max(self.part_rows, key=self.part_rows.__getitem__)
        parts = np.where(np.isin(parts, list(self.forests)), parts, fallback)
        return [(part, parts == part) for part in np.unique(parts)]

    # -- the file beside the model ----------------------------------------------------------------
    def save(self, path: str | Path, meta: dict[str, Any], source: str | Path) -> Path:
        """Write these trees, ``meta`` and the identity of the model file ``source`` they come
        from to ``path`` (atomically)."""
        named = {**{f"forest{i}": t for i, t in enumerate(self.forests.values())},
                 **{f"adapter{i}": t for i, t in enumerate(self.adapters.values())}}
        flat = {name: t for name, t in named.items() if isinstance(t, FlatTrees)}
        if len(flat) != len(named):
            raise TypeError("only flat trees are saved: RuntimeForest.predictor(flat=True)")
        header = {"format": SIDECAR_FORMAT, "source": _identity(source), "meta": meta,
                  "feature_names": list(self.feature_names), "residual_of": self.residual_of,
                  "separate": self.separate,
                  "parts": [[float(p), float(self.interval_scales[p]), int(self.part_rows[p])]
                            for p in self.forests],
                  "adapters": list(self.adapters)}
        arrays: dict[str, Any] = {"header": np.array(json.dumps(header))}
        for name, trees in flat.items():
            arrays.update(trees.arrays(name))
        target = Path(path)
        tmp = target.with_name(target.name + ".tmp.npz")
        np.savez(tmp, **arrays)
        tmp.replace(target)
        return target

    @classmethod
    def load(cls, path: str | Path, source: str | Path) -> tuple[ForestPredictor, dict[str, Any]]:
        """The trees at ``path`` and their model's meta, if they come from the model file
        ``source`` as it is now; raises ValueError otherwise (stale, corrupt or crafted:
        nothing is unpickled)."""
        with np.load(path, allow_pickle=False) as arrays:
            header = json.loads(str(arrays["header"]))
            if header.get("format") != SIDECAR_FORMAT or header.get("source") != \
                    _identity(source):
                raise ValueError(f"{path} does not belong to {source} as it is now")
            names = tuple(str(n) for n in header["feature_names"])
            forests, scales, rows = {}, {}, {}
            for i, (part, scale, count) in enumerate(header["parts"]):
                forests[float(part)] = FlatTrees.from_arrays(arrays, f"forest{i}", len(names))
                scales[float(part)], rows[float(part)] = float(scale), int(count)
            adapters = {str(device): FlatTrees.from_arrays(arrays, f"adapter{i}", len(names))
                        for i, device in enumerate(header["adapters"])}
        if not forests:
            raise ValueError(f"{path} holds no forest")
        return cls(names, header["residual_of"], header["separate"], forests, scales, rows,
                   adapters), dict(header["meta"])


def log_baseline(features: Features, residual_of: str | None) -> np.ndarray | float:
    """The log baseline a forest learns the residual of: the ``residual_of`` feature, or 0."""
    return np.asarray(features[residual_of], dtype=float) if residual_of else 0.0


def sidecar_path(model_path: str | Path) -> Path:
    """Where the flat trees of the model file ``model_path`` are kept."""
    path = Path(model_path)
    return path.with_name(path.stem + SIDECAR_SUFFIX)


def _identity(path: str | Path) -> list[int | str]:
    """The model file's size and a hash of its last 64 KiB: a model file is a zip, whose end
    lists every member with its checksum; a copy keeps it, another model changes it."""
    size = os.stat(path).st_size
    with open(path, "rb") as file:
        file.seek(max(0, size - IDENTITY_TAIL))
        tail = hashlib.sha256(file.read()).hexdigest()
    return [size, tail]
