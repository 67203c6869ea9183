"""Hidden `worker` subcommand: the child-process entry point of the Slicer module.

The Slicer module never imports torch in its own process. It writes the input volume and a request
file into a temporary folder and starts ``python -m SelfSupCTDenoiseLib.commands.worker --request
REQUEST.json`` (or ``selfsupctdenoise worker --request ...``). The worker answers on stdout, one JSON
object per line, flushed as it goes:

- ``{"event": "progress", ...}``: one `ProgressEvent` (phase, step/total, loss, ETA);
- ``{"event": "result", "info": {...}}``: the last line of a successful run, exit code 0;
- ``{"event": "error", "kind": ..., "message": ...}``: a message meant for the user, exit code 1;
- ``{"event": "cancelled", "message": ...}``: SIGTERM/SIGINT or the parent process went away,
  exit code 3; the outputs are not written (or are removed if the signal came during writing).

With ``--probe`` instead of ``--request`` it times this computer for the panel's first estimate
(``--bundle DIR --device cpu|cuda|auto --threads N``): it loads the denoiser as a run would, runs the
run's own probe (`engine.eta.probe`, default settings) and answers ``{"event": "probe", "costs":
{"stepS", "sliceS", "startupS"}, "device", "threads", "probeS"}``, exit code 0: the unit costs of
the panel's estimate (one default adaptation step, one 512x512 slice, both with the run's overhead
as the run's own ETA counts it; the start-up from the launch (or from this module's import) to the
probe), or an error line as a run's.

Any other line (a library printing something) is not JSON and readers ignore it. Error kinds:
``input`` (bad volume or parameters), ``bundle``, ``dependency`` (torch or another package missing),
``out_of_memory``, ``request`` (unreadable request), ``internal`` (a bug: the traceback goes to
stderr, the message says so).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Dict, Optional

HELP = "internal: run one denoising request, or time this computer, for the Slicer module (JSON lines on stdout)"

REQUEST_FORMAT = "selfsupctdenoise-worker-request"
REQUEST_VERSION = 1
EXIT_OK, EXIT_ERROR, EXIT_CANCELLED = 0, 1, 3
#: Seconds between checks that the parent process is still alive.
PARENT_POLL_S = 2.0
#: When this module was imported: where a probe's start-up starts if the caller gives no --launched-at.
IMPORTED = time.time()
#: The panel's unit of inference: one whole 512x512 slice.
SLICE_PIXELS = 512 * 512


def make_request(input_path: str, output_path: str, noise_map_path: Optional[str] = None,
                 bundle_path: Optional[str] = None, config: Optional[Dict[str, Any]] = None,
                 parent_pid: Optional[int] = None, output_dtype: Optional[str] = None) -> Dict[str, Any]:
    """The request as a JSON-ready dict; relative paths are resolved against the request's folder.
    `output_dtype`: pixel type of the output (default: the input's; "float32" keeps it unrounded)."""
    return {
        "format": REQUEST_FORMAT,
        "version": REQUEST_VERSION,
        "input": str(input_path),
        "output": str(output_path),
        "noise_map": None if noise_map_path is None else str(noise_map_path),
        "bundle": None if bundle_path is None else str(bundle_path),
        "config": dict(config or {}),
        "parent_pid": parent_pid,
        "output_dtype": output_dtype,
    }


def read_request(path: Path) -> Dict[str, Any]:
    """Load and check a request file; raises ValueError with a readable message."""
    try:
        request = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"Cannot read the worker request {path}: {exc}") from None
    if not isinstance(request, dict) or request.get("format") != REQUEST_FORMAT:
        raise ValueError(f"{path} is not a worker request (format {REQUEST_FORMAT!r} expected).")
    if request.get("version") != REQUEST_VERSION:
        raise ValueError(f"{path}: unsupported request version {request.get('version')!r} "
                         f"(this engine reads version {REQUEST_VERSION}).")
    for key in ("input", "output"):
        if not request.get(key):
            raise ValueError(f"{path}: the request has no {key!r} path.")
    base = Path(path).resolve().parent
    for key in ("input", "output", "noise_map", "bundle"):
        if request.get(key):
            request[key] = str(base / request[key])
    if not isinstance(request.get("config", {}), dict):
        raise ValueError(f"{path}: 'config' must be an object of AdaptConfig fields.")
    return request


def emit(payload: Dict[str, Any]) -> None:
    """Write one protocol line. Only the main thread writes, so lines never interleave."""
    sys.stdout.write(json.dumps(payload, default=str) + "\n")
    sys.stdout.flush()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--request", type=Path, metavar="REQUEST.json",
                      help="request file written by the Slicer module (see the module docstring)")
    mode.add_argument("--probe", action="store_true",
                      help="time this computer's adaptation step and slice with the bundle's denoiser instead")
    probe = parser.add_argument_group("with --probe")
    probe.add_argument("--bundle", type=Path, help="the bundle folder (default: the shipped lite bundle)")
    probe.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    probe.add_argument("--threads", type=int, default=0, help="CPU threads (0: all cores)")
    probe.add_argument("--launched-at", type=float, metavar="EPOCH_S",
                       help="when the caller launched this process (time.time()); default: when this module was imported")


def _is_out_of_memory(exc: BaseException) -> bool:
    torch = sys.modules.get("torch")
    oom_type = getattr(torch, "OutOfMemoryError", None) if torch is not None else None
    if oom_type is not None and isinstance(exc, oom_type):
        return True
    return isinstance(exc, (MemoryError, RuntimeError)) and "out of memory" in str(exc).lower()


def _parent_alive(pid: int) -> bool:
    try:
        import psutil
    except ImportError:
        psutil = None
    if psutil is not None:
        return psutil.pid_exists(pid)
    if os.name == "nt":  # no signal-0 probe on Windows without psutil: assume alive
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _watch_parent(pid: int, token, stop: threading.Event) -> None:
    """Cancel the run if the process that started us disappears (Slicer closed or crashed)."""
    while not stop.wait(PARENT_POLL_S):
        if not _parent_alive(pid):
            token.cancel()
            return


def _remove_outputs(request: Dict[str, Any]) -> None:
    for key in ("output", "noise_map"):
        if request.get(key):
            Path(request[key]).unlink(missing_ok=True)


def emit_error(exc: Exception) -> None:
    """The error line for `exc`, of the kind that tells the user what to do (see the module docstring)."""
    from ..errors import BundleError, InputError

    if isinstance(exc, (InputError, BundleError)):
        emit({"event": "error", "kind": "input" if isinstance(exc, InputError) else "bundle", "message": str(exc)})
    elif isinstance(exc, ImportError):
        missing = getattr(exc, "name", None) or str(exc)
        emit({"event": "error", "kind": "dependency", "message": (
            f"The Python package '{missing}' is not installed in {sys.executable}. In Slicer, click "
            "Denoise again to install it (PyTorch comes through the PyTorch extension); on the "
            "command line, install the engine with pip.")})
    elif _is_out_of_memory(exc):
        emit({"event": "error", "kind": "out_of_memory", "message": (
            "Ran out of memory (" + str(exc).strip().splitlines()[0][:200] + "). Choose device "
            "'cpu' under Advanced, use a smaller batch size, or close other programs using "
            "the GPU, then try again.")})
    else:
        traceback.print_exc(file=sys.stderr)
        emit({"event": "error", "kind": "internal", "message": (
            f"Unexpected error: {type(exc).__name__}: {exc}. This is a bug in SelfSupCTDenoise; "
            "the details are in the log.")})


def run_probe(args: argparse.Namespace) -> int:
    """`--probe`: this computer's unit costs with the bundle's denoiser (see the module docstring)."""
    try:
        from ..engine.bundle import load_bundle
        from ..engine.config import AdaptConfig
        from ..engine.eta import probe
        from ..engine.inference import describe_device, resolve_device, torch_threads

        config = AdaptConfig(device=args.device, threads=args.threads)
        with torch_threads(config.threads) as threads:
            device = resolve_device(config.device)
            model = load_bundle(args.bundle).build_denoiser(device)
            started = time.time()
            measured = probe(model, config)
            emit({"event": "probe", "costs": {"stepS": measured.run_seconds(1, 0),
                                              "sliceS": measured.run_seconds(0, SLICE_PIXELS),
                                              "startupS": started - (args.launched_at or IMPORTED)},
                  "device": describe_device(device), "threads": threads, "probeS": time.time() - started})
        return EXIT_OK
    except Exception as exc:  # noqa: BLE001 - the last line must always be a protocol line
        emit_error(exc)
        return EXIT_ERROR


def run(args: argparse.Namespace) -> int:
    if args.probe:
        return run_probe(args)
    # Imports that need nothing heavy first: an unreadable request must not wait for torch.
    from ..engine.progress import CancelToken
    from ..errors import Cancelled

    try:
        request = read_request(args.request)
    except ValueError as exc:
        emit({"event": "error", "kind": "request", "message": str(exc)})
        return EXIT_ERROR

    token = CancelToken()

    def on_signal(signum, _frame):
        token.cancel()
        # Stop at once even inside a long call; the run writes nothing after this point.
        raise Cancelled(f"Stopped by signal {signum}.")

    for name in ("SIGTERM", "SIGINT", "SIGBREAK"):
        if hasattr(signal, name):
            try:
                signal.signal(getattr(signal, name), on_signal)
            except (ValueError, OSError):  # not the main thread, or not settable here
                pass

    stop_watch = threading.Event()
    if request.get("parent_pid"):
        threading.Thread(target=_watch_parent, args=(int(request["parent_pid"]), token, stop_watch),
                         daemon=True).start()

    try:
        import torch  # noqa: F401 - fail early, and clearly, when torch is missing
        from ..engine.config import AdaptConfig
        from ..files.denoise_file import denoise_file

        config = AdaptConfig.from_dict(request.get("config") or {})
        info = denoise_file(request["input"], request["output"], request.get("noise_map"),
                            request.get("bundle"), config,
                            progress=lambda event: emit(json.loads(event.to_json())), cancel=token,
                            output_dtype=request.get("output_dtype"))
        token.raise_if_cancelled()
        emit({"event": "result", "info": info})
        return EXIT_OK
    except Cancelled as exc:
        _remove_outputs(request)
        emit({"event": "cancelled", "message": str(exc)})
        return EXIT_CANCELLED
    except Exception as exc:  # noqa: BLE001 - the last line must always be a protocol line
        emit_error(exc)
    finally:
        stop_watch.set()
    return EXIT_ERROR


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(prog="selfsupctdenoise worker", description=HELP)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
