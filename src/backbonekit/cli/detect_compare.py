"""``backbonekit detect compare``: parse the pairs, the shared options and the folder; call one library function.

The work (checking the pairs, training, timing, the table and the report) is
:func:`backbonekit.detection.training.compare.compare` (or :func:`~backbonekit.detection.training.compare.resume_comparison`).
"""

from __future__ import annotations

import argparse

from ..detection.training.compare import PRESETS, SPEED_IMAGES, SPEED_REPEATS
from ..detection.training.config import RPN_PROPOSAL_FIELDS
from ..engine.config import DEVICES
from .detect_train import FLAG_HELP

# detect train options every pair shares, as flags (any other one: --config FILE)
SHARED_FLAGS = {"dataset": str, "data_dir": str, "epochs": int, "time": str, "input_size": int, "batch_size": int,
                "lr": float, "seed": int, "device": str, "workers": int}
PLAN_FLAGS = ("pairs", "preset", "config", "speed_images", "speed_repeats", *SHARED_FLAGS, *RPN_PROPOSAL_FIELDS)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "compare", help="train (detector, backbone) pairs on one dataset under one budget; one table, a "
                        "mAP-latency plot and a report", argument_default=argparse.SUPPRESS,
        description="Train each DETECTOR:BACKBONE pair with detect train's trainer and the same settings, then "
                    "compare parameters, MACs, inference speed (timed side by side), training time and COCO mAP. "
                    "Rerunning the same command (or --resume OUT) continues a stopped comparison.")
    p.add_argument("--pairs", nargs="+", metavar="DETECTOR:BACKBONE",
                   help="e.g. yolov3:darknet53 retinanet:resnet50 retinanet:detnet59 (replace the preset's)")
    p.add_argument("--preset", choices=sorted(PRESETS), help="a prepared plan: cpu-hour (7 pairs on photodigits, "
                                                              "7 minutes each; docs/detection-compare.md)")
    p.add_argument("--out", help="the comparison folder (new, empty, or this comparison's to continue it)")
    p.add_argument("--resume", metavar="OUT", help="continue the comparison in OUT with the plan it was started with")
    p.add_argument("--config", help="YAML/JSON of detect train options every pair shares (flags win)")
    for name, kind in SHARED_FLAGS.items():
        choices = DEVICES if name == "device" else None
        p.add_argument("--" + name.replace("_", "-"), dest=name, type=kind, choices=choices,
                       help=FLAG_HELP[name] + (" (each pair's own budget)" if name == "time" else ""))
    for name in RPN_PROPOSAL_FIELDS:
        p.add_argument("--" + name.replace("_", "-"), dest=name, type=int, metavar="N", help=FLAG_HELP[name])
    p.add_argument("--speed-images", type=int, metavar="N",
                   help=f"validation images per inference timing round (default {SPEED_IMAGES})")
    p.add_argument("--speed-repeats", type=int, metavar="N",
                   help=f"interleaved inference timing rounds (default {SPEED_REPEATS})")
    p.set_defaults(func=run_compare)


def run_compare(args: argparse.Namespace) -> int:
    from ..detection.training.compare import compare, make_plan, markdown_table, resume_comparison

    given = vars(args)
    if "resume" in given:
        other = [name for name in PLAN_FLAGS + ("out",) if name in given and name not in ("device", "workers")]
        if other:
            raise ValueError(f"--resume {args.resume} continues the saved plan: expected no other options than "
                             f"--device and --workers, found {', '.join('--' + n.replace('_', '-') for n in other)}")
        result = resume_comparison(args.resume, device=given.get("device"), workers=given.get("workers"))
    else:
        if "out" not in given:
            raise ValueError("--out DIR is required: the comparison folder (or --resume DIR to continue one)")
        plan = make_plan(given.get("pairs"), preset=given.get("preset"), config_file=given.get("config"),
                         settings={k: given[k] for k in SHARED_FLAGS if k in given},
                         model_options={"fasterrcnn": {k: given[k] for k in RPN_PROPOSAL_FIELDS if k in given}},
                         speed_images=given.get("speed_images"), speed_repeats=given.get("speed_repeats"))
        result = compare(plan, args.out)
    print(markdown_table(result.rows))
    return 0
