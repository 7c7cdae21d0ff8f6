"""One module per CLI sub-command: add_arguments(parser) and run(args) -> int."""

from __future__ import annotations

import argparse


def add_training_arguments(parser: argparse.ArgumentParser, doc: str, *, config_help: str,
                           overrides_help: str, resume_help: str) -> None:
    """What ``train`` and ``train-maskrcnn`` both take: --config, KEY=VALUE overrides, --out,
    --resume; the command's docstring (after its first paragraph) ends the description."""
    parser.description = (parser.description or "") + "\n\n" + doc.split("\n\n", 1)[1]
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--config", help=config_help)
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=overrides_help)
    parser.add_argument("--out", help="output directory (overrides out_dir)")
    parser.add_argument("--resume", action="store_true", help=resume_help)
