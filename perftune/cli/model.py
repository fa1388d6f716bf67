"""`perftune fit`, `predict` and `evaluate`: train models on the store and ask them."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from perftune.cli._common import (
    db_option,
    family_option,
    family_problem,
    model_option,
    non_negative_int,
    positive_int,
    print_frame,
    problem_options,
)
from perftune.errors import PerftuneInputError


def register(sub: Any) -> None:
    fit = sub.add_parser(
        "fit", help="train a runtime model on the store (held-out problems excluded)",
        description="Train a runtime model of a kernel family on the store's ok GPU "
        "measurements, leaving out the held-out problems (perftune/data/problems/heldout.csv "
        "and FAMILY_heldout.csv) and measuring the model on them. 'forest' is a random forest "
        "on log runtime with calibrated intervals; 'roofline' the analytical model with one "
        "fitted scale per dataflow. Saved as a skops file (no pickle) with its features, "
        "devices, data snapshot and held-out accuracy.")
    family_option(fit)
    fit.add_argument("--model", choices=["forest", "roofline"], default="forest")
    fit.add_argument("--target", choices=["runtime", "power", "energy"], default="runtime",
                     help="what the model predicts: runtime (default), or the average power / "
                     "energy per call (forests on the busy-GPU energy rows; saved beside the "
                     "runtime model as FAMILY_power.skops / FAMILY_energy.skops)")
    fit.add_argument("--device", action="append", help="train on this device only "
                     "(repeatable; default: every GPU in the store)")
    fit.add_argument("--trees", type=positive_int,
                     help="forest size (default: 60 for runtime, 100 for power and energy)")
    fit.add_argument("--adapt-below", type=non_negative_int, default=None, metavar="N",
                     help="runtime forest: a GPU with fewer than N measured problems (default "
                     "30) is left out of the forest and gets a correction fitted on its own "
                     "rows; 0: every GPU's rows train the forest alike")
    fit.add_argument("--out", type=Path, default=None,
                     help="model file (default: FAMILY_runtime.skops in $PERFTUNE_HOME/models)")
    db_option(fit)
    predict = sub.add_parser(
        "predict", help="predict one config's runtime, or rank every known config",
        description="Predict the runtime of one config of a family's problem on a device "
        "(--dataflow and --config), or rank every config the store knows for the problem "
        "(default), with the model's interval and the roofline's bound.",
        epilog="examples:\n  perftune predict --problem 128x4096x4096 --device nvidia-h200\n"
        "  perftune predict --family decode_attention --device nvidia-h200 --problem "
        "batch=1,heads=32,kv_heads=8,context=32768,head_dim=128",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    problem_options(predict)
    predict.add_argument("--dataflow", help="one dataflow of the family (e.g. gemm: cublas, "
                         "triton, triton_splitk)")
    predict.add_argument("--config", help="one config as JSON, e.g. "
                         "'{\"BLOCK_M\":128,\"BLOCK_N\":128,\"BLOCK_K\":64,\"GROUP_M\":8,"
                         "\"num_warps\":8,\"num_stages\":3}'")
    predict.add_argument("--top", type=positive_int, default=10,
                         help="how many ranked configs to show")
    predict.add_argument("--objective", choices=["time", "energy"], default="time",
                         help="rank by predicted runtime (default) or energy per call")
    model_option(predict)
    predict.add_argument("--json", action="store_true", help="print JSON")
    db_option(predict)
    evaluate = sub.add_parser(
        "evaluate", help="report a model's accuracy on the held-out problems",
        description="Evaluate a model on its family's held-out problems: "
        "writes metrics.json, predicted_vs_measured.png, residuals_by_size.png, roofline.png "
        "and index.html into --out.")
    family_option(evaluate)
    model_option(evaluate)
    evaluate.add_argument("--device", help="only this device (default: every GPU)")
    evaluate.add_argument("--out", type=Path, default=Path("report"),
                          help="report directory (default ./report)")
    db_option(evaluate)
    fit.set_defaults(handler=cmd_fit)
    predict.set_defaults(handler=cmd_predict)
    evaluate.set_defaults(handler=cmd_evaluate)


def cmd_fit(args: argparse.Namespace) -> int:
    from perftune.collect.families import load_family
    from perftune.model.runtime import fit_model, model_path, save_model
    from perftune.store.db import Store

    params: dict[str, Any] = ({"n_estimators": args.trees}
                              if args.model == "forest" and args.trees else {})
    if args.adapt_below is not None:
        params["adapt_below"] = args.adapt_below
    with Store(args.db, read_only=True) as store:
        model, meta = fit_model(store, kind=args.model, family=args.family,
                                devices=args.device, target=args.target, **params)
    name = load_family(args.family).name
    path = save_model(args.out or model_path(args.target, family=name), model, meta)
    print(f"trained a {args.target} {args.model} ({name}) on {meta['rows']} measurements "
          f"of {meta['problems']} problems ({', '.join(meta['devices'])}); saved {path}")
    for device, problems in meta.get("adapted_devices", {}).items():
        print(f"{device}: {problems} problems, corrected from its own rows (fewer than "
              f"--adapt-below)")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    import pandas as pd

    from perftune.model.runtime import Predictor, model_path, parse_config
    from perftune.store.db import Store

    family, problem = family_problem(args)
    predictor = Predictor.load(args.model or model_path("runtime", family=family.name))
    if predictor.family.name != family.name:
        raise PerftuneInputError(f"{args.model} is a {predictor.family.name} model; give "
                                 f"--family {predictor.family.name} or a {family.name} model")
    with Store(args.db, read_only=True) as store:
        library = args.dataflow == family.library_dataflow
        if args.config is not None or (args.dataflow and library):
            if not args.dataflow:
                raise PerftuneInputError("--config needs --dataflow (one of "
                                         f"{', '.join(family.dataflows)})")
            family.check_dataflow(args.dataflow)
            config = parse_config(args.config)
            row = pd.DataFrame([{**problem.sizes, "dtype": problem.dtype,
                                 "dataflow": args.dataflow, "device_id": args.device,
                                 "config": json.dumps(config), **config}])
            result = predictor.predict(store, row)
        else:
            dataflows = [args.dataflow] if args.dataflow else None
            ranked = predictor.rank_problem(store, problem, dataflows=dataflows,
                                            objective=args.objective, energy_top=args.top)
            result = ranked.head(args.top)
    columns = [c for c in ("dataflow", "config", "predicted_ms", "low_ms", "high_ms",
                           "predicted_power_w", "predicted_energy_j", "bound",
                           "attainable_fraction", "trained_on_device") if c in result]
    shown = result[columns]
    if args.json:
        print(shown.to_json(orient="records", indent=2))
    else:
        print_frame(shown.round(4), f"{problem} on {args.device} (model {predictor.meta['kind']}"
                     f", trained on {', '.join(predictor.meta['devices'])})")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    import pandas as pd

    from perftune.model.report import evaluate
    from perftune.model.runtime import Predictor, model_path
    from perftune.store.db import Store

    predictor = Predictor.load(args.model or model_path("runtime", family=args.family))
    with Store(args.db, read_only=True) as store:
        metrics = evaluate(predictor, store, args.out, device=args.device)
    print_frame(pd.DataFrame(metrics).T.round(4).reset_index(names="device"),
                 f"held-out accuracy of {predictor.meta['kind']} ({args.out}/index.html)")
    return 0


