"""The ``polypssl`` command: one subcommand per stage, each in the module that implements it.

Every command module exposes ``add_arguments(parser)`` and ``run(args) -> int``; this file only
wires them together, so each stage stays importable on its own (``python -m polypssl.<stage>``).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from polypssl import __version__
from polypssl.errors import PolypsslError

#: name -> (module, one-line help). Modules are imported only when their command runs.
COMMANDS: dict[str, tuple[str, str]] = {
    "data": ("polypssl.data.cli", "split, check, download or synthesise datasets"),
    "convert": ("polypssl.backbones.convert", "convert an official or torchvision/timm checkpoint to encoder safetensors"),
    "pretrain": ("polypssl.pretrain.loop", "self-supervised pretraining (MoCo v3, Barlow Twins, MAE)"),
    "finetune": ("polypssl.finetune.loop", "fine-tune a segmenter (DeepLabV3+ or DPT) on a labelled dataset"),
    "evaluate": ("polypssl.evaluate.run", "score a fine-tuned run on a dataset, per image"),
    "report": ("polypssl.evaluate.report", "Table 1, Fig. 1, Fig. 2 and statistics for a set of runs"),
    "predict": ("polypssl.finetune.predict", "write predicted masks and overlays for images"),
    "study": ("polypssl.study.cli", "run a whole study (default: the built-in CPU demo)"),
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="polypssl", description="Pretrain, fine-tune and evaluate polyp segmentation models."
    )
    parser.add_argument("--version", action="version", version=f"polypssl {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (module_name, help_text) in COMMANDS.items():
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        if only is None or only == name:
            importlib.import_module(module_name).add_arguments(cmd)
        else:
            cmd.add_argument("rest", nargs=argparse.REMAINDER)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(only=command if command in COMMANDS else None)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if not args.verbose:
        # Accelerate logs five INFO lines per checkpoint; our own log already names each one.
        logging.getLogger("accelerate").setLevel(logging.WARNING)
    module = importlib.import_module(COMMANDS[args.command][0])
    try:
        return int(module.run(args) or 0)
    except PolypsslError as err:
        print(f"polypssl {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"polypssl {args.command}: interrupted", file=sys.stderr)
        return 130


def stage_main(stage: str) -> None:
    """Entry for ``python -m polypssl.<stage>`` and ``accelerate launch -m polypssl.<stage>``."""
    sys.exit(main([stage, *sys.argv[1:]]))


if __name__ == "__main__":
    sys.exit(main())
