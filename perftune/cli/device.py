"""`perftune device`: the device a collection would run on, and its calibration."""

from __future__ import annotations

import argparse
import json
from typing import Any

from perftune.cli._common import db_option, make_console
from perftune.errors import PerftuneInputError


def register(sub: Any) -> None:
    device = sub.add_parser("device", help="show the device a collection would run on",
                            description="Print the identity of the device a collection "
                            "would run on: GPU 0 with CUDA, else the Triton interpreter.")
    device.add_argument("--json", action="store_true", help="print JSON")
    device.add_argument("--interpret", action="store_true",
                        help="describe the Triton-interpreter (CPU) device even with a GPU")
    device.add_argument("--calibrate", action="store_true",
                        help="measure the GPU's ceilings (fp16/bf16 matmul TFLOP/s, copy "
                        "GB/s) and store them with the device (takes ~10 s)")
    db_option(device)

    device.set_defaults(handler=cmd_device)


def cmd_device(args: argparse.Namespace) -> int:
    from perftune.collect.device import GPU, calibrate, identify, select_mode

    mode = select_mode(True if args.interpret else None)
    identity = identify(mode)
    if args.calibrate:
        if mode != GPU:
            raise PerftuneInputError("--calibrate needs a GPU; none is visible")
        identity.update(calibrate())
        from perftune.store.db import Store, now

        record = {k: v for k, v in identity.items() if k != "software"}
        with Store(args.db) as store:
            store.upsert_device({**record, "calibrated_at": now()})
    if args.json:
        print(json.dumps(identity, indent=2, default=str))
        return 0
    from rich.table import Table

    table = Table(title="perftune device", show_header=False)
    for key, value in identity.items():
        if key == "software":
            for name, version in value.items():
                table.add_row(name, str(version))
        else:
            table.add_row(key, str(value))
    make_console().print(table)
    return 0

