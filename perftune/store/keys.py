"""Canonical text forms and the natural key of a measurement."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping


def canonical_config(config: Mapping[str, int]) -> str:
    """JSON with sorted keys: the same config always has the same text."""
    return json.dumps(dict(sorted(config.items())), separators=(",", ":"))


def canonical_shape(dims: Mapping[str, int]) -> str:
    return ",".join(f"{name}={value}" for name, value in dims.items())


def software_key(torch_version: str | None, triton_version: str | None,
                 cuda_version: str | None, driver_version: str | None) -> str:
    return (f"torch={torch_version};triton={triton_version};cuda={cuda_version};"
            f"driver={driver_version}")


def measurement_key(*, device_id: str, family: str, dataflow: str, dtype: str, shape: str,
                    config: str, software: str) -> str:
    """The natural key: the same measurement twice has the same key, so it is stored once."""
    text = "|".join((device_id, family, dataflow, dtype, shape, config, software))
    return hashlib.sha1(text.encode()).hexdigest()
