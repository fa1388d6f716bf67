"""Kernel families. Built-in ones by name; others as ``package.module:ClassName``."""

from __future__ import annotations

import importlib

from perftune.collect.families._base import (
    Config,
    Cost,
    DeviceLimits,
    Inputs,
    KernelFamily,
)
from perftune.errors import PerftuneInputError

BUILTIN: dict[str, str] = {
    "gemm": "perftune.collect.families.gemm:GemmFamily",
    "rmsnorm": "perftune.collect.families.rmsnorm:RMSNormFamily",
    "decode_attention": "perftune.collect.families.decode_attention:DecodeAttentionFamily",
}


def load_family(ref: str) -> KernelFamily:
    """A family by built-in name (``gemm``) or import path (``my_pkg.families:MyFamily``)."""
    target = BUILTIN.get(ref, ref)
    if ":" not in target:
        raise PerftuneInputError(
            f"unknown family {ref!r}; choose from {', '.join(BUILTIN)} or give "
            f"'package.module:ClassName' of a KernelFamily")
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
        cls = getattr(module, class_name)
    except (ImportError, AttributeError) as exc:
        raise PerftuneInputError(f"cannot load family {ref!r}: {exc}") from None
    if not (isinstance(cls, type) and issubclass(cls, KernelFamily)):
        raise PerftuneInputError(f"{ref!r} is not a KernelFamily subclass")
    family = cls()
    family.ref = ref  # type: ignore[attr-defined]
    return family


__all__ = ["BUILTIN", "Config", "Cost", "DeviceLimits", "Inputs", "KernelFamily", "load_family"]
