"""`selfsupctdenoise` command line: one subcommand per module in `commands/`."""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

from . import __version__
from .errors import Cancelled, SelfSupCTDenoiseError

#: Subcommands, in the order `--help` lists them; each is `commands/<name>.py`.
COMMANDS = ("denoise", "evaluate", "measure", "demo", "pretrain", "simulate", "benchmark", "worker")
HIDDEN = ("worker",)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="selfsupctdenoise",
        description="Low-dose CT denoising with self-supervised per-volume adaptation "
                    "(research use, not for diagnosis).")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f".commands.{name.replace('-', '_')}", __package__)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.endswith(f"commands.{name}"):
                continue  # optional command not shipped
            raise
        # a subparser added without help= is not listed in --help
        kwargs = {"description": module.HELP} if name in HIDDEN else {"help": module.HELP, "description": module.HELP}
        command = sub.add_parser(name, **kwargs)
        module.add_arguments(command)
        command.set_defaults(run=module.run)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except Cancelled as exc:
        print(f"selfsupctdenoise: {exc}", file=sys.stderr)
        return 130
    except SelfSupCTDenoiseError as exc:
        print(f"selfsupctdenoise: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("selfsupctdenoise: interrupted; nothing was written.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
