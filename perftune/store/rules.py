"""Rules about stored data that every reader applies the same way.

Energy: each energy row records how it was measured. "busy-queue" calls the kernel from Python
back to back; a kernel shorter than its Python launch then leaves the GPU idle between calls,
which lowers the power and dilutes the energy per call. "busy-graph" replays a CUDA graph of a
batch of calls (one host launch per batch), so the GPU never waits for the host. Both keep the
GPU busy for kernels longer than their launch (from 0.1 ms, benchmarks/timer_bubbles.py) and
then agree within about 1% over 1 s windows (benchmarks/energy_methods.py); over shorter
windows a reading moves several percent from one to the next. So an energy row is trusted
with a window of about 1 s, and a busy-queue row only from 0.1 ms.
"""

from __future__ import annotations

from typing import Any

ENERGY_METHOD = "busy-graph"
EAGER_METHOD = "busy-queue"
EAGER_TRUSTED_FROM_MS = 0.1
TRUSTED_WINDOW_S = 0.9  # the default window is 1 s (between NVML counter updates)

# The rows whose energy was measured with the GPU kept busy, as a WHERE condition.
BUSY_SQL = (f"(energy_window_s >= {TRUSTED_WINDOW_S} AND (energy_method = '{ENERGY_METHOD}' "
            f"OR (energy_method = '{EAGER_METHOD}' AND runtime_ms >= {EAGER_TRUSTED_FROM_MS})))")


def busy_energy(rows: Any) -> Any:
    """:data:`BUSY_SQL` on a frame of measurements: a boolean Series."""
    method = rows["energy_method"]
    return (rows["energy_window_s"] >= TRUSTED_WINDOW_S) & (
        (method == ENERGY_METHOD)
        | ((method == EAGER_METHOD) & (rows["runtime_ms"] >= EAGER_TRUSTED_FROM_MS)))


# Rows a client sent through the service (timer 'client') are kept and shown as such, but
# models train and replays answer only from rows perftune measured itself. A WHERE condition
# on a measurements table aliased as {}: ``VERIFIED_SQL.format("m")``.
CLIENT_TIMER = "client"
VERIFIED_SQL = "coalesce({}.timer, '') <> '" + CLIENT_TIMER + "'"
