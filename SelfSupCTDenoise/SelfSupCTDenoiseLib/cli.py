"""`selfsupctdenoise` command line: one subcommand per module in `commands/`."""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import threading
from typing import List, Optional

from . import __version__
from .errors import Cancelled, SelfSupCTDenoiseError, Terminated
from .commands.console import shown  # the terminal's view of a name (files.names)

#: Subcommands, in the order `--help` lists them; each is `commands/<name>.py`.
COMMANDS = ("denoise", "cohort", "evaluate", "measure", "demo", "pretrain", "simulate", "benchmark",
            "benchmark-lesions", "worker")
HIDDEN = ("worker",)
EXIT_CODES = ("exit status: 0 done; 1 some volumes failed (a batch or cohort: the others are done); 2 bad input "
              "or usage, refused with one line; 130 interrupted (Ctrl+C, SIGINT); 143 terminated (SIGTERM). "
              "Interrupted or terminated, finished outputs are kept and nothing half-written is left; a cohort "
              "still writes its report and its run_finished event.")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="selfsupctdenoise",
        description="Low-dose CT denoising with self-supervised per-volume adaptation "
                    "(research use, not for diagnosis).", epilog=EXIT_CODES)
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
        command = sub.add_parser(name, epilog=EXIT_CODES, **kwargs)
        module.add_arguments(command)
        command.set_defaults(run=module.run)
    return parser


def _on_sigterm(signum, frame):
    Terminated.received = True
    raise Terminated()


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if in_main_thread else None
    Terminated.received = False
    try:
        return int(args.run(args) or 0)
    except Cancelled as exc:
        print(f"selfsupctdenoise: {shown(exc)}", file=sys.stderr)
        return 130
    except SelfSupCTDenoiseError as exc:
        print(f"selfsupctdenoise: error: {shown(exc)}", file=sys.stderr)
        return 2
    except OSError as exc:  # the file system said no (disk full, read-only, permissions): not a bug
        print(f"selfsupctdenoise: error: {shown(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # Ctrl+C or SIGTERM; a command may say what was written
        terminated = Terminated.came(exc)
        print(f"selfsupctdenoise: {'terminated' if terminated else 'interrupted'}"
              f"{'; ' + shown(exc) if str(exc) else ''}.", file=sys.stderr)
        return 143 if terminated else 130
    finally:
        if in_main_thread:  # main() is also called in-process (tests, scripts)
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


if __name__ == "__main__":
    sys.exit(main())
