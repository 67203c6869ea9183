"""Running a cohort on Ray: one task per volume with its resource request, bounded retries,
progress and events, Ctrl-C.

Security. Whoever reaches a Ray cluster's ports can run code on it. A local Ray (no address) is
started with every one of its servers on 127.0.0.1 (checked after the start) and Ray's token
authentication on. Joining a cluster turns token authentication on in this process where the
installed Ray has it (Ray >= 2.52; the token comes from RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or
~/.ray/auth_token), unless RAY_AUTH_MODE is set. Tasks receive paths and return small summaries:
no image data goes through Ray's object store, and the run's objects go when the driver disconnects.

Privacy. What Ray shows (process titles in `ps`, the task and job lists of its dashboard and state
API) carries no input name (often a patient ID): tasks are named by the volume's row
("selfsupctdenoise-3"), the job by the command's name, not its command line. A local Ray keeps its
sessions, logs and sockets, and a token of its own, in a folder that only the user can open (0o700,
the token 0o600), removed when it stops.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Set, Tuple

from ..errors import InputError
from .events import CohortProgress, EventLog
from .reaper import start_reaper, stop_reaper

#: Attempts after the first for a task whose worker died or that raised an unexpected error.
DEFAULT_MAX_RETRIES = 2
#: Seconds the running tasks get after Ctrl-C to stop on their own (their temporaries removed)
#: before they are killed.
CANCEL_GRACE_S = 10.0
POLL_S = 0.2
#: Seconds one attempt of a volume's task may run before it is stopped and the volume fails
#: (--task-timeout): hours, far above a real volume's time (minutes on CPU, seconds on a GPU), so that
#: only a task that hangs (a read that never returns: a FIFO, a lost mount) reaches it.
DEFAULT_TASK_TIMEOUT_S = 6 * 3600.0
#: Seconds a cohort tries to reach the cluster of --address before it gives up.
DEFAULT_CONNECT_TIMEOUT_S = 60.0
#: Ray's switch for "this node's address is the loopback one" (what it does on macOS and Windows),
#: read when Ray is imported: its servers then listen on 127.0.0.1 only.
LOOPBACK_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
#: First Ray release with token authentication.
TOKEN_AUTH_SINCE = (2, 52)
#: Start of the name of a local Ray's private folder (in the system's temporary folder).
RAY_FOLDER_PREFIX = "selfsupctdenoise-ray-"
#: What Ray's job list shows as the driver's command line.
JOB_ENTRYPOINT = "selfsupctdenoise cohort"


def _ray_version() -> Optional[Tuple[int, ...]]:
    try:
        return tuple(int(part) for part in metadata.version("ray").split(".")[:2])
    except (metadata.PackageNotFoundError, ValueError):
        return None


def has_token_auth() -> bool:
    version = _ray_version()
    return version is not None and version >= TOKEN_AUTH_SINCE


def _import_ray():
    if _ray_version() is None:
        raise InputError('A cohort runs on Ray, which is not installed: pip install "selfsupctdenoise[cohort]" '
                         '(or pip install "ray[default]").')
    import ray

    return ray


def _check_loopback(node_ip: str) -> None:
    if node_ip not in ("127.0.0.1", "::1", "localhost"):
        raise InputError(f"The local Ray runs on {node_ip}, not on 127.0.0.1 only: stopped. Start the cohort "
                         "in a fresh process (Ray must not be imported before it), or give --address.")


def _host_port(address: str) -> Optional[Tuple[str, int]]:
    """(host, port) of "host:port" or "ray://host:port"; None for "auto" (Ray finds the address)."""
    rest = address.split("://", 1)[-1].rstrip("/")
    host, _, port = rest.rpartition(":")
    if not host or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def wait_for_cluster(address: str, timeout_s: float) -> None:
    """Refuse, within `timeout_s`, a cluster address where nothing answers: Ray itself retries for many
    minutes, printing warnings that name another address."""
    where = _host_port(address)
    if where is None:
        return
    import socket

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection(where, timeout=max(0.1, min(5.0, deadline - time.monotonic()))).close()
            return
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
        if time.monotonic() + 1.0 > deadline:
            raise InputError(f"No Ray cluster answers at {address} (tried for {timeout_s:g} s: {reason}): check the "
                             "address and that the cluster is up (--connect-timeout sets how long to try).")
        time.sleep(1.0)


@contextlib.contextmanager
def ray_cluster(address: Optional[str] = None, num_cpus: Optional[int] = None,
                num_gpus: Optional[int] = None, connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S) -> Iterator[Any]:
    """Ray, connected: a new local Ray on this machine (`address` None; `num_cpus`, `num_gpus` its
    resources, default all) or the cluster at `address` ("auto", "host:port", "ray://host:10001"),
    refused where nothing answers within `connect_timeout_s`.
    Disconnects at the end; a local Ray is stopped. Where this process is already connected (a
    script or a test session that started Ray with this function), that connection is used and
    left as it is."""
    if address is None and "ray" in sys.modules and sys.modules["ray"].is_initialized():
        ray = sys.modules["ray"]
        _check_loopback(ray.util.get_node_ip_address())
        yield ray
        return
    if address is None:
        if "ray" in sys.modules:  # it read its settings (below) when imported: we cannot vouch for them
            raise InputError("Ray was imported in this process before the cohort could set up a local Ray on "
                             "127.0.0.1 with token authentication: run the cohort in a fresh process.")
        # before Ray is imported: it reads these then, and its servers inherit them
        os.environ.setdefault(LOOPBACK_SWITCH, "0")
        if has_token_auth():
            os.environ.setdefault("RAY_AUTH_MODE", "token")
        _put_package_on_path()
        folder = _PrivateRayFolder()
    else:
        wait_for_cluster(address, connect_timeout_s)
        if has_token_auth() and "RAY_AUTH_MODE" not in os.environ:
            os.environ["RAY_AUTH_MODE"] = "token"
    ray = _import_ray()
    if ray.is_initialized():
        raise InputError("Ray is already connected in this process; disconnect it first (ray.shutdown()).")
    import logging

    handlers = _signal_handlers()
    try:
        with _job_entrypoint(ray, JOB_ENTRYPOINT):
            if address is None:
                context = ray.init(num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False, log_to_driver=False,
                                   logging_level=logging.WARNING, _temp_dir=str(folder.ray_dir))
            else:
                context = ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
    except Exception as exc:  # noqa: BLE001 - any failure to start or join (Ray raises bare Exception too)
        with contextlib.suppress(Exception):
            ray.shutdown()  # what a failed start had started (its agents would outlive the run)
        if address is None:
            folder.remove()
        where = "start a local Ray" if address is None else f"connect to the Ray cluster at {address}"
        raise InputError(f"Could not {where}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else exc}"
                         + ("" if address is None else " (is the token set? see docs/COHORT.md)")) from None
    finally:
        _restore_signal_handlers(handlers)
    try:
        if address is None:
            _check_loopback((context.address_info or {}).get("node_ip_address", ""))
        if address is not None and os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
            print("selfsupctdenoise: warning: Ray token authentication is off (RAY_AUTH_MODE="
                  f"{os.environ.get('RAY_AUTH_MODE', 'unset')}): anyone who reaches the cluster's ports can run "
                  "code on it.", file=sys.stderr)
        yield ray
    finally:
        ray.shutdown()
        if address is None:
            folder.remove()


class _PrivateRayFolder:
    """A folder that only this user can open (0o700) holding a local Ray's temporary folder `ray_dir`
    (sessions, logs, sockets; Ray makes it and its folders world-writable, the 0o700 above shuts them)
    and a token of this run's own (0o600; Ray would write ~/.ray/auth_token with the umask's mode,
    readable by everyone) unless RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH names one. A watcher (reaper.py)
    ends what is left of that Ray and deletes the folder when `remove` is called or this process dies;
    `remove` also restores the environment."""

    TOKEN_VARIABLES = ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")

    def __init__(self) -> None:
        self.path = Path(tempfile.mkdtemp(prefix=RAY_FOLDER_PREFIX))
        self.ray_dir = self.path / "ray"
        self.reaper = start_reaper(self.path)
        self.token_path: Optional[str] = None
        if os.environ.get("RAY_AUTH_MODE", "").lower() == "token" and not any(
                os.environ.get(name) for name in self.TOKEN_VARIABLES):
            import secrets

            token = self.path / "auth_token"
            with os.fdopen(os.open(token, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as handle:
                handle.write(secrets.token_hex(32))  # what Ray's own generator writes: 256 random bits
            self.token_path = os.environ["RAY_AUTH_TOKEN_PATH"] = str(token)  # Ray's processes inherit it

    def remove(self) -> None:
        if self.token_path is not None and os.environ.get("RAY_AUTH_TOKEN_PATH") == self.token_path:
            del os.environ["RAY_AUTH_TOKEN_PATH"]
        stop_reaper(self.reaper)
        shutil.rmtree(self.path, ignore_errors=True)


@contextlib.contextmanager
def _job_entrypoint(ray, text: str) -> Iterator[None]:
    """Ray records the driver's whole command line (its input paths) as the job's entrypoint, which
    the cluster's job list shows to everyone with access: `text` instead (where the installed Ray
    computes it in the function replaced here; elsewhere it is left to Ray)."""
    utils = getattr(getattr(ray, "_private", None), "utils", None)
    original = getattr(utils, "get_entrypoint_name", None)
    if original is None:
        yield
        return
    utils.get_entrypoint_name = lambda: text
    try:
        yield
    finally:
        utils.get_entrypoint_name = original


#: Signals whose meaning is the tool's (cli.py): cancel the rest, keep what is finished, write the report.
SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _signal_handlers() -> Dict[int, Any]:
    """The handlers this process has now (main thread only: elsewhere none can be set)."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {signum: signal.getsignal(signum) for signum in SIGNALS}


def _restore_signal_handlers(handlers: Dict[int, Any]) -> None:
    """ray.init replaces the SIGTERM handler (Ray's exits with status 1, or aborts in its core worker):
    put back the ones the tool had, so that SIGTERM and SIGINT end a cohort as they end a batch."""
    for signum, handler in handlers.items():
        if handler is not None:  # None: set outside Python, cannot be put back from here
            signal.signal(signum, handler)


def _put_package_on_path() -> None:
    """Local workers import this package as the driver does, installed or not (tests, a checkout)."""
    from pathlib import Path

    root = str(Path(__file__).resolve().parents[2])
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if root not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([root, *paths])


def check_resources(ray, cpus: float, gpus: float) -> Dict[str, float]:
    """The cluster's totals; refuses a request that no node can satisfy (the task would wait forever)."""
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    best_cpu = max((n.get("CPU", 0.0) for n in nodes), default=0.0)
    best_gpu = max((n.get("GPU", 0.0) for n in nodes), default=0.0)
    if cpus > best_cpu or gpus > best_gpu:
        raise InputError(f"No node of the Ray cluster has {cpus:g} CPU(s) and {gpus:g} GPU(s) for one volume "
                         f"(largest node: {best_cpu:g} CPUs, {best_gpu:g} GPUs): lower --cpus-per-volume or "
                         "--gpus-per-volume, or add such a node.")
    totals = ray.cluster_resources()
    return {"nodes": len(nodes), "CPU": totals.get("CPU", 0.0), "GPU": totals.get("GPU", 0.0)}


class _Board:
    """A Ray actor (no CPU) that tasks post their events to and the driver drains."""

    def __init__(self) -> None:
        self.events: List[Dict[str, Any]] = []

    def post(self, event: Dict[str, Any]) -> None:
        self.events.append(event)

    def drain(self) -> List[Dict[str, Any]]:
        events, self.events = self.events, []
        return events


def _task(spec: Dict[str, Any], board) -> Dict[str, Any]:
    """The Ray task: one volume (see task.process_volume). Its start is on the board before any work
    (so the driver counts every attempt, even of a task that ends at once); phases go without waiting."""
    import ray

    from .task import process_volume

    def post(event: Dict[str, Any]) -> None:
        sent = board.post.remote(event)
        if event["event"] == "started":
            ray.get(sent)

    return process_volume(spec, post)


def _error_text(ray, exc: BaseException, attempts: int) -> Tuple[str, str]:
    """(status, one-line reason) for an exception raised by ray.get on a task's result."""
    errors = ray.exceptions
    if isinstance(exc, errors.TaskCancelledError):
        return "cancelled", "cancelled"
    if isinstance(exc, errors.RayTaskError):
        cause = getattr(exc, "cause", None) or exc
        text = str(cause).strip().splitlines()
        return "failed", f"{type(cause).__name__}: {text[-1] if text else ''} ({attempts} attempt(s))"
    return "failed", f"the worker died ({type(exc).__name__}) in each of {attempts} attempt(s)"


def task_name(index: int) -> str:
    """What Ray shows of a volume's task (process title, dashboard): its row, never its file name."""
    return f"selfsupctdenoise-{index}"


def run_tasks(ray, specs: List[Dict[str, Any]], names: Dict[int, str], *, cpus: float, gpus: float,
              max_retries: int, log: EventLog, progress: CohortProgress,
              on_event: Optional[Callable[[Dict[str, Any]], None]] = None, task_timeout_s: Optional[float] = None
              ) -> Tuple[Dict[int, Dict[str, Any]], Optional[KeyboardInterrupt]]:
    """Run one task per spec (volume) and wait for all: ({index: outcome}, the Ctrl-C or SIGTERM that
    stopped the run, else None). An outcome has "status" (done, qc, failed, cancelled), "attempts",
    and what the task returned (host, seconds, device, error, qc_error). On Ctrl-C the tasks not
    finished are cancelled (KeyboardInterrupt in each, so its temporaries are removed; killed after
    CANCEL_GRACE_S); finished outputs stay. An attempt still running `task_timeout_s` after it started
    is killed (a task that hangs cannot be asked to stop) and its volume fails; what it was writing
    stays in its private folder, removed at the end of the run (task.remove_staging)."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    # on the driver's node: a lost worker node must not take the run's events (and the run) with it
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    board = ray.remote(num_cpus=0)(_Board).options(scheduling_strategy=here).remote()
    remote = ray.remote(_task)
    pending: Dict[Any, int] = {}
    for spec in specs:
        # a QC-only task (the output was complete) reads files and needs no GPU
        request = {"num_cpus": cpus, "num_gpus": gpus if spec["denoise"] else 0}
        ref = remote.options(**request, max_retries=max_retries, retry_exceptions=True,
                             name=task_name(spec["index"])).remote(spec, board)
        pending[ref] = spec["index"]
        emit = log.write("queued", index=spec["index"], volume=names[spec["index"]],
                         task="denoise" if spec["denoise"] else "qc")
        if on_event:
            on_event(emit)
    outcomes: Dict[int, Dict[str, Any]] = {}
    attempts: Dict[int, int] = {}
    running: Dict[int, Dict[str, Any]] = {}
    since: Dict[int, float] = {}  # when the running attempt of a volume started (time.monotonic)
    overdue: Set[int] = set()  # volumes whose attempt ran past task_timeout_s: killed

    def record(event: str, **fields) -> None:
        emitted = log.write(event, volume=names.get(fields.get("index")), **fields)
        if on_event:
            on_event(emitted)

    def drain() -> None:
        for event in ray.get(board.drain.remote()):
            index = event.get("index")
            if index in outcomes:
                continue  # a late event of a finished task
            kind = event.pop("event")
            if kind == "started":
                attempts[index] = attempts.get(index, 0) + 1
                running[index], since[index] = event, time.monotonic()
                if attempts[index] > 1:
                    record("retry", attempt=attempts[index], **event)
                record("started", attempt=attempts[index], **event)
            else:
                record(kind, **event)

    def finish(ref) -> None:
        index = pending.pop(ref)
        running.pop(index, None)
        tries = max(1, attempts.get(index, 0))
        try:
            result = ray.get(ref)
        except ray.exceptions.RayError as exc:
            status, error = _error_text(ray, exc, tries)
            result = {"status": status, "error": error}
        if index in overdue:  # killed by us: whatever its end raised
            result = {"status": "failed", "error": f"still running after {task_timeout_s:g} s (--task-timeout): "
                                                   "stopped; a read that never returns (a FIFO, a lost mount)?"}
        outcomes[index] = {**result, "attempts": tries}
        fields = {k: v for k, v in result.items() if k not in ("index", "status")}
        record(result["status"] if result["status"] != "qc" else "done", index=index, attempts=tries, **fields)
        if result["status"] == "failed":
            progress.line(f"{names[index]}: failed: {result['error']}")
        elif result["status"] == "done":
            qc = f"; QC image failed: {result['qc_error']}" if result.get("qc_error") else ""
            progress.line(f"{names[index]}: done in {result.get('seconds', 0):.1f} s on {result.get('host')} "
                          f"({result.get('device')}){qc}")

    denoising = {spec["index"] for spec in specs if spec["denoise"]}  # the bar counts these, not QC-only tasks

    def show() -> None:
        failed = sum(o["status"] == "failed" for o in outcomes.values())
        waiting = len([i for i in pending.values() if i in denoising and i not in running])
        progress.update(len(denoising & outcomes.keys()), len(running), failed, waiting)

    def stop_overdue() -> None:
        now = time.monotonic()
        for ref, index in pending.items():
            if index in running and index not in overdue and now - since[index] > task_timeout_s:
                overdue.add(index)
                ray.cancel(ref, force=True)

    interrupted: Optional[KeyboardInterrupt] = None
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=POLL_S)
            drain()
            if task_timeout_s is not None:
                stop_overdue()
            for ref in ready:
                finish(ref)
            show()
    except KeyboardInterrupt as exc:  # Ctrl+C, or SIGTERM (errors.Terminated)
        interrupted = exc
        _cancel(ray, pending, finish)
    for ref, index in list(pending.items()):
        pending.pop(ref)
        outcomes[index] = {"status": "cancelled", "error": "cancelled", "attempts": attempts.get(index, 0)}
        record("cancelled", index=index)
    with contextlib.suppress(Exception):
        ray.kill(board)
    return outcomes, interrupted


def _cancel(ray, pending: Dict[Any, int], finish) -> None:
    """Ask every unfinished task to stop, collect those that finish in the grace time, kill the rest."""
    for ref in list(pending):
        with contextlib.suppress(Exception):
            ray.cancel(ref)
    deadline = time.monotonic() + CANCEL_GRACE_S
    try:
        while pending and time.monotonic() < deadline:
            ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=POLL_S)
            for ref in ready:
                finish(ref)
    except KeyboardInterrupt:
        pass  # a second Ctrl+C: kill now
    for ref in list(pending):
        with contextlib.suppress(Exception):
            ray.cancel(ref, force=True)
