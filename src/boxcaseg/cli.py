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

from boxcaseg.errors import BoxcasegError, ConfigError, DataError

COMMANDS: dict[str, tuple[str, str]] = {
    "make-demo-data": ("make_demo_data", "write the embedded synthetic dataset (salient + box sets)"),
    "train": ("train", "jointly train the BoxCaseg network on salient + box-supervised images"),
    "label": ("label", "write proxy masks for every box of a COCO/VOC dataset (boxcaseg|grabcut|box|sam)"),
    "merge-labels": ("merge_labels", "join the part files of `label --shard K/N` runs into one output"),
    "calibrate": ("calibrate", "fit the keep/ignore rule of proxy masks on a few GT masks, or apply it"),
    "train-maskrcnn": ("train_maskrcnn", "train the Proxy Mask R-CNN on boxes + proxy masks"),
    "predict": ("predict", "run a trained Mask R-CNN on images; COCO results JSON + overlay PNGs"),
    "eval": ("evaluate", "score masks against ground truth (mIoU*, IoU@k) or results (COCO/VOC AP)"),
    "demo": ("demo", "the whole pipeline on the embedded synthetic data, one results table"),
    "prepare": ("prepare", "derive DUTS-Single / augmented VOC from the public datasets"),
    "report": ("report", "static HTML report of labeled masks: tables, plots, worst-first gallery"),
    "export": ("export", "labels -> files CVAT, Label Studio or FiftyOne import, worst score first"),
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="boxcaseg", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="commands:\n" + "\n".join(
                                    f"  {k:<16}{v[1]}" for k, v in COMMANDS.items()))
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("--debug", action="store_true",
                   help="show the full Python traceback of an error (default: one line)")
    p.add_argument("command", choices=list(COMMANDS), metavar="command")
    return p


# exit codes: 2 = bad input (data, config, paths: the user can fix it), 1 = the run failed
# otherwise (diverged training, a bug), 130 = interrupted
EXIT_BAD_INPUT, EXIT_FAILED, EXIT_INTERRUPTED = 2, 1, 130
_WORKER_TRACEBACK = "Original Traceback (most recent call last):"


def one_line(e: BaseException) -> str:
    """The user-facing line of an error; a DataLoader worker's re-raised error carries the
    worker's whole traceback in its message: keep only the original error's own message."""
    text = str(e)
    if _WORKER_TRACEBACK in text:
        last = [ln for ln in text.split(_WORKER_TRACEBACK, 1)[1].splitlines() if ln.strip()]
        if last:
            text = last[-1].strip()
            head, sep, rest = text.partition(": ")
            if sep and "Error" in head.rsplit(".", 1)[-1] and " " not in head:
                text = rest  # drop "boxcaseg.errors.DataError: "
    return " ".join(text.split()) if "\n" in text else text


def _os_error_line(e: OSError) -> str:
    """``<file>: <what> (<what to do>)`` for the OS errors a bad --out or input path gives."""
    where = e.filename if e.filename is not None else "?"
    what = e.strerror or type(e).__name__
    hint = {PermissionError: "choose a path you may write to, or fix its permissions",
            IsADirectoryError: "a file name was expected, not a folder",
            NotADirectoryError: "a part of the path is a file, not a folder",
            FileExistsError: "choose another path or remove what is there",
            FileNotFoundError: "check the path"}.get(type(e), "check the path and free space")
    return f"{where}: {what} ({hint})"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # --debug is accepted anywhere on the line (it is the first thing one adds after an error)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    top = _parser()
    # Split "boxcaseg [-v] [--debug] CMD rest..." so only CMD's module gets imported.
    idx = next((i for i, a in enumerate(argv) if not a.startswith("-")), None)
    if idx is None:
        top.print_help()
        return 0 if any(a in ("-h", "--help") for a in argv) else EXIT_BAD_INPUT
    ns = top.parse_args(argv[: idx + 1])
    ns.debug = debug
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
    prefix = f"boxcaseg {ns.command}: error:"
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        print(f"boxcaseg {ns.command}: interrupted; finished work is kept, rerun with --resume "
              "where the command supports it", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (DataError, ConfigError) as e:
        if ns.debug:
            raise
        print(f"{prefix} {one_line(e)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except BoxcasegError as e:  # e.g. TrainingDivergedError: the input was fine, the run not
        if ns.debug:
            raise
        print(f"{prefix} {one_line(e)}", file=sys.stderr)
        return EXIT_FAILED
    except (PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError,
            FileNotFoundError) as e:
        if ns.debug:
            raise
        print(f"{prefix} {_os_error_line(e)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as e:  # disk full, I/O error: not the user's input, but still one line
        if ns.debug:
            raise
        print(f"{prefix} {_os_error_line(e)}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as e:
        if ns.debug:
            raise
        print(f"{prefix} internal error: {type(e).__name__}: {one_line(e)} (rerun with "
              "boxcaseg --debug to see the traceback, and please report it)", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    raise SystemExit(main())
