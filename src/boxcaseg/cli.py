"""``boxcaseg <command>``: one entry point, one sub-command per stage, no logic of its own.

Each command lives in ``boxcaseg/commands/<name>.py`` and exposes
``add_arguments(parser)`` and ``run(args) -> int``. Modules are imported only for the
command that runs, so ``boxcaseg --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from boxcaseg.errors import BoxcasegError

COMMANDS: dict[str, tuple[str, str]] = {
    "make-demo-data": ("make_demo_data", "write the embedded synthetic dataset (salient + box sets)"),
    "train": ("train", "jointly train the BoxCaseg network on salient + box-supervised images"),
    "label": ("label", "write proxy masks for every box of a COCO/VOC dataset (boxcaseg|grabcut|box)"),
    "train-maskrcnn": ("train_maskrcnn", "train the Proxy Mask R-CNN on boxes + proxy masks"),
    "predict": ("predict", "run a trained Mask R-CNN on images; COCO results JSON + overlay PNGs"),
    "eval": ("evaluate", "score masks against ground truth (mIoU*, IoU@k) or results (COCO/VOC AP)"),
    "demo": ("demo", "the whole pipeline on the embedded synthetic data, one results table"),
    "prepare": ("prepare", "derive DUTS-Single / augmented VOC from the public datasets"),
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="boxcaseg", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="commands:\n" + "\n".join(
                                    f"  {k:<16}{v[1]}" for k, v in COMMANDS.items()))
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("command", choices=list(COMMANDS), metavar="command")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    top = _parser()
    # Split "boxcaseg [-v] CMD rest..." so only CMD's module gets imported.
    idx = next((i for i, a in enumerate(argv) if not a.startswith("-")), None)
    if idx is None:
        top.print_help()
        return 0 if any(a in ("-h", "--help") for a in argv) else 2
    ns = top.parse_args(argv[: idx + 1])
    module_name, help_text = COMMANDS[ns.command]
    logging.basicConfig(level=logging.DEBUG if ns.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    module = importlib.import_module(f"boxcaseg.commands.{module_name}")
    sub = argparse.ArgumentParser(prog=f"boxcaseg {ns.command}", description=help_text)
    module.add_arguments(sub)
    # intermixed, so KEY=VALUE overrides may come before or after --options; commands with
    # their own sub-commands (prepare) cannot be parsed that way and need no overrides
    has_subcommands = any(isinstance(a, argparse._SubParsersAction) for a in sub._actions)
    args = (sub.parse_args if has_subcommands else sub.parse_intermixed_args)(argv[idx + 1:])
    try:
        return int(module.run(args) or 0)
    except BoxcasegError as e:
        print(f"boxcaseg {ns.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"boxcaseg {ns.command}: interrupted; finished work is kept, rerun with --resume "
              "where the command supports it", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
