"""Runs the engine's worker in a child interpreter and follows it; no Slicer, Qt or torch here.

The child (Slicer's PythonSlicer, or any Python with the engine) reads a request from a temporary
folder and answers with one JSON line per event (see `SelfSupCTDenoiseLib.commands.worker`). A reader
thread parses the lines into a queue; the GUI drains it with `poll()` from a timer, so the main
thread never waits on the child. States::

    IDLE --start()--> RUNNING --exit 0 + result--> COMPLETED
                              --error / crash----> FAILED
                              --exit 3-----------> CANCELLED   (the worker stopped itself)
                      RUNNING --cancel()--> CANCELLING --child gone--> CANCELLED

A cancelled run stays cancelled whatever exit code arrives later. Cancel stops the whole process
tree (the launcher and the real interpreter) and the temporary folder is removed as soon as the tree
is gone. POSIX: the child leads its own process group, which gets SIGTERM, then SIGKILL after a short
grace period. Windows: PythonSlicer is a launcher that runs the real interpreter as its child, and
Slicer bundles no psutil; `taskkill /T /F` finds that child only through its living parent, so the
tree is killed at once, while the launcher still runs (a windowless process cannot be asked to stop).
"""

import collections
import enum
import json
import logging
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from SelfSupCTDenoiseLib.commands.worker import EXIT_CANCELLED, make_request
from SelfSupCTDenoiseLib.engine.progress import ProgressEvent

#: Folder holding the engine package, put on the child's PYTHONPATH.
ENGINE_PARENT_DIR = Path(__file__).resolve().parent.parent
WORKER_MODULE = "SelfSupCTDenoiseLib.commands.worker"
#: Non-protocol lines kept to explain a crash.
LOG_TAIL_LINES = 40

logger = logging.getLogger(__name__)


class RunState(enum.Enum):
    IDLE = "idle"
    RUNNING = "running"
    CANCELLING = "cancelling"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (RunState.COMPLETED, RunState.FAILED, RunState.CANCELLED)


@dataclass
class RunResult:
    state: RunState
    info: Dict[str, Any] = field(default_factory=dict)
    errorKind: str = ""
    message: str = ""
    returnCode: Optional[int] = None
    elapsedS: float = 0.0


def onWindows() -> bool:
    return sys.platform == "win32"


def hiddenConsoleArgs() -> Dict[str, Any]:
    """Popen/run keywords that keep a console window from flashing up on Windows (as
    `slicer.util.launchConsoleProcess` does); empty elsewhere."""
    if not onWindows():
        return {}
    info = subprocess.STARTUPINFO()
    info.dwFlags |= subprocess.STARTF_USESHOWWINDOW
    info.wShowWindow = subprocess.SW_HIDE
    return {"startupinfo": info, "creationflags": subprocess.CREATE_NO_WINDOW}


def taskkillCommand(pid: int) -> List[str]:
    """Windows: force-kill `pid` and every process it started."""
    return ["taskkill", "/T", "/F", "/PID", str(pid)]


def parseWorkerLine(line: str) -> Optional[Dict[str, Any]]:
    """A protocol message (dict with 'event') from one output line, or None for anything else."""
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        message = json.loads(line)
    except ValueError:
        return None
    if not isinstance(message, dict) or message.get("event") not in ("progress", "result", "error", "cancelled", "probe"):
        return None
    if message["event"] == "progress":
        event = ProgressEvent.from_json(line)
        if event is None or not _wellTyped(event):
            return None
        message["progressEvent"] = event
    return message


def _wellTyped(event: ProgressEvent) -> bool:
    number = (int, float)
    return (isinstance(event.phase, str) and isinstance(event.step, int) and isinstance(event.total, int)
            and event.step >= 0 and event.total >= 0 and isinstance(event.message, str)
            and all(v is None or (isinstance(v, number) and not isinstance(v, bool))
                    for v in (event.loss, event.eta_s)))


class WorkerRunner:
    """One run of the worker: `createWorkDir()`, write the input to `inputPath`, `start()`, then
    `poll()` (GUI timer) or `waitForCompletion()` (scripts), finally `cleanup()`.

    Args:
        pythonExecutable: interpreter for the child (Slicer: PythonSlicer; default: this one).
        command: full command instead of ``[python, -m, worker]`` (tests: a fake worker script);
            ``--request PATH`` is appended.
        environment: base environment of the child (default: this process's).
        pythonPath: folders put first on the child's PYTHONPATH (default: the engine's parent).
        tempRoot: where the temporary folder is made (default: the system's).
        killGraceS: seconds between asking the tree to stop and killing it.
    """

    def __init__(self, pythonExecutable: Optional[str] = None, command: Optional[Sequence[str]] = None,
                 environment: Optional[Dict[str, str]] = None,
                 pythonPath: Sequence[os.PathLike] = (ENGINE_PARENT_DIR,),
                 tempRoot: Optional[str] = None, killGraceS: float = 1.0):
        self.command = list(command) if command else [pythonExecutable or sys.executable, "-m", WORKER_MODULE]
        self.environment = environment
        self.pythonPath = [str(p) for p in pythonPath]
        self.tempRoot = tempRoot
        self.killGraceS = killGraceS
        self.workDir: Optional[Path] = None
        self._proc: Optional[subprocess.Popen] = None
        self._queue: "queue.Queue[Dict[str, Any]]" = queue.Queue()
        self._lock = threading.Lock()
        self._state = RunState.IDLE
        self._result: Optional[RunResult] = None
        self._readerThread: Optional[threading.Thread] = None
        self._treeSnapshot: List[Any] = []
        self._loadResults: Optional[Callable[["WorkerRunner"], Any]] = None
        self.loadedResults: Any = None
        self._startTime = 0.0
        self.logTail: "collections.deque[str]" = collections.deque(maxlen=LOG_TAIL_LINES)

    # -- files ---------------------------------------------------------------------------------
    def createWorkDir(self) -> Path:
        if self.workDir is None:
            self.workDir = Path(tempfile.mkdtemp(prefix="SelfSupCTDenoise-", dir=self.tempRoot))
        return self.workDir

    @property
    def inputPath(self) -> Path:
        return self.createWorkDir() / "input.nrrd"

    @property
    def outputPath(self) -> Path:
        return self.createWorkDir() / "denoised.nrrd"

    @property
    def noiseMapPath(self) -> Path:
        return self.createWorkDir() / "noise_map.nrrd"

    @property
    def requestPath(self) -> Path:
        return self.createWorkDir() / "request.json"

    # -- state -----------------------------------------------------------------------------------
    @property
    def state(self) -> RunState:
        with self._lock:
            return self._state

    @property
    def result(self) -> Optional[RunResult]:
        """Set once the run has finished (state COMPLETED, FAILED or CANCELLED)."""
        with self._lock:
            return self._result

    @property
    def pid(self) -> Optional[int]:
        return self._proc.pid if self._proc is not None else None

    # -- running ---------------------------------------------------------------------------------
    def start(self, config: Dict[str, Any], bundlePath: Optional[str] = None, noiseMap: bool = True,
              forceCpu: bool = False, loadResults: Optional[Callable[["WorkerRunner"], Any]] = None,
              outputDtype: Optional[str] = None) -> None:
        """Write the request and launch the child; the input file must already be at `inputPath`.
        `outputDtype` (e.g. "float32"): the output file's pixel type instead of the input's.
        `loadResults(runner)`, if given, runs in the reader thread after a successful run (e.g. to
        read the result files off the GUI thread); its return value becomes `loadedResults`."""
        self._loadResults = loadResults
        with self._lock:
            if self._state is not RunState.IDLE:
                raise RuntimeError(f"This runner was already used (state {self._state.value}); make a new one.")
            self._state = RunState.RUNNING
        self._startTime = time.monotonic()
        request = make_request(self.inputPath.name, self.outputPath.name,
                               self.noiseMapPath.name if noiseMap else None,
                               None if bundlePath is None else str(Path(bundlePath).resolve()), config,
                               parent_pid=os.getpid(), output_dtype=outputDtype)
        self.requestPath.write_text(json.dumps(request, indent=1), encoding="utf-8")
        try:
            self._proc = self.launch(["--request", str(self.requestPath)], forceCpu, cwd=str(self.workDir))
        except OSError as exc:
            self._finish(None, RunResult(RunState.FAILED, errorKind="launch", message=(
                f"Could not start the denoising process ({self.command[0]}): {exc}.")))
            return
        self._readerThread = threading.Thread(target=self._readOutput, name="SelfSupCTDenoise-reader", daemon=True)
        self._readerThread.start()

    def launch(self, arguments: Sequence[str], forceCpu: bool = False, cwd: Optional[str] = None) -> subprocess.Popen:
        """Start the worker command with `arguments`: the engine on its PYTHONPATH, unbuffered UTF-8
        output with stderr in stdout, no console window, its own process group (`forceCpu`: no GPU
        visible to it). Raises OSError if it cannot start."""
        env = dict(self.environment if self.environment is not None else os.environ)
        env["PYTHONPATH"] = os.pathsep.join(self.pythonPath + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        env["PYTHONUNBUFFERED"] = "1"
        env["PYTHONIOENCODING"] = "utf-8"
        if forceCpu:
            env["CUDA_VISIBLE_DEVICES"] = "-1"  # the child cannot touch the GPU at all
        popenArgs = hiddenConsoleArgs()
        if onWindows():
            popenArgs["creationflags"] |= subprocess.CREATE_NEW_PROCESS_GROUP
        else:
            popenArgs["start_new_session"] = True  # own process group: the tree can be signalled at once
        command = self.command + list(arguments)
        logger.debug("Launching %s", command)
        return subprocess.Popen(command, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, encoding="utf-8", errors="replace", bufsize=1,
                                **popenArgs)

    def _readOutput(self) -> None:
        """Reader thread: parse every line, queue protocol messages, then record how the run ended."""
        final: Dict[str, Any] = {}
        try:
            for line in self._proc.stdout:
                message = parseWorkerLine(line)
                if message is None:
                    text = line.rstrip()
                    if text:
                        self.logTail.append(text)
                        self._queue.put({"event": "log", "line": text})
                    continue
                if message["event"] in ("result", "error", "cancelled"):
                    final = message
                message["receivedAt"] = time.monotonic()  # when it happened, not when the GUI polled
                self._queue.put(message)
        except (OSError, ValueError) as exc:  # pipe broken: the exit code below tells the rest
            self.logTail.append(f"(output unreadable: {exc})")
        finally:
            self._proc.stdout.close()
            returnCode = self._proc.wait()
            self._finish(returnCode, self._interpret(returnCode, final))

    def _interpret(self, returnCode: int, final: Dict[str, Any]) -> RunResult:
        elapsed = time.monotonic() - self._startTime
        if returnCode == 0 and final.get("event") == "result":
            missing = [p.name for p in (self.outputPath,) if not p.is_file()]
            if not missing:
                if self._loadResults is not None and self.state is RunState.RUNNING:
                    try:
                        self.loadedResults = self._loadResults(self)
                    except Exception as exc:  # noqa: BLE001 - reported as a failed run
                        return RunResult(RunState.FAILED, errorKind="import", returnCode=0, elapsedS=elapsed,
                                         message=f"Could not read the result files: {exc}")
                return RunResult(RunState.COMPLETED, info=final.get("info") or {}, returnCode=0, elapsedS=elapsed)
            return RunResult(RunState.FAILED, errorKind="internal", returnCode=0, elapsedS=elapsed,
                             message=f"The denoising process reported success but wrote no {', '.join(missing)}.")
        if returnCode == EXIT_CANCELLED or final.get("event") == "cancelled":
            return RunResult(RunState.CANCELLED, returnCode=returnCode, elapsedS=elapsed,
                             message=final.get("message") or "The denoising process stopped itself; nothing was "
                             "created.")
        if final.get("event") == "error":
            return RunResult(RunState.FAILED, errorKind=str(final.get("kind") or "error"), returnCode=returnCode,
                             elapsedS=elapsed, message=str(final.get("message") or "The denoising failed."))
        lastLine = self.logTail[-1] if self.logTail else ""
        if returnCode is not None and returnCode < 0:
            message = (f"The denoising process was killed (signal {-returnCode}); the computer may have run out "
                       "of memory. Try device 'cpu', a smaller batch size, or close other programs.")
        else:
            message = f"The denoising process stopped unexpectedly (exit code {returnCode})."
        if lastLine:
            message += f" Last output: {lastLine[:300]}"
        return RunResult(RunState.FAILED, errorKind="crash", returnCode=returnCode, elapsedS=elapsed, message=message)

    def _finish(self, returnCode: Optional[int], result: RunResult) -> None:
        with self._lock:
            if self._state in (RunState.CANCELLING, RunState.CANCELLED):
                # The user's cancel wins over whatever the exit code says.
                result = RunResult(RunState.CANCELLED, returnCode=returnCode, elapsedS=result.elapsedS,
                                   message="Cancelled by the user; nothing was created.")
            self._state = result.state
            self._result = result
        if result.state is not RunState.COMPLETED:
            self._removeWorkDir()
        self._queue.put({"event": "finished", "state": result.state})

    def poll(self) -> List[Dict[str, Any]]:
        """Drain the messages received so far (main thread; never blocks). Progress messages carry a
        `ProgressEvent` under 'progressEvent' and their arrival time (time.monotonic) under 'receivedAt';
        child output that is not protocol comes as 'log'."""
        messages = []
        while True:
            try:
                message = self._queue.get_nowait()
            except queue.Empty:
                return messages
            if message["event"] == "log":
                logger.info("[worker] %s", message["line"])
            messages.append(message)

    def waitForCompletion(self, timeout: Optional[float] = None) -> RunResult:
        """Block until the run has finished (for scripts and tests); TimeoutError after `timeout` s."""
        if self._readerThread is not None:
            self._readerThread.join(timeout)
            if self._readerThread.is_alive():
                raise TimeoutError(f"The denoising process is still running after {timeout} s.")
        result = self.result
        if result is None:
            raise RuntimeError("The runner was not started.")
        return result

    # -- cancelling ------------------------------------------------------------------------------
    def cancel(self) -> bool:
        """Stop the run: signal the process tree now, kill it after `killGraceS` (Windows: kill the
        tree at once, from a thread). Returns False if there was nothing to cancel. Never blocks."""
        with self._lock:
            if self._state is not RunState.RUNNING:
                return False
            self._state = RunState.CANCELLING
        if self._proc is None:
            return True
        self._treeSnapshot = self._processTree()
        if not onWindows():  # Windows: taskkill takes a moment, so the killer thread runs it
            self._signalTree(hard=False)
        threading.Thread(target=self._killAfterGrace, name="SelfSupCTDenoise-killer", daemon=True).start()
        return True

    def _processTree(self) -> List[Any]:
        try:
            import psutil
        except ImportError:
            return []
        try:
            parent = psutil.Process(self._proc.pid)
            return parent.children(recursive=True) + [parent]
        except psutil.NoSuchProcess:
            return []

    def _signalTree(self, hard: bool) -> None:
        """Terminate (or kill) every process of the run: psutil's snapshot of the tree when psutil
        is there, plus the process group (POSIX) or taskkill /T (Windows)."""
        pid = self._proc.pid
        if onWindows():
            # Before anything else ends the launcher: /T needs it alive to find the interpreter. While
            # it is not reaped (poll() is None) its pid cannot belong to another process.
            if self._proc.poll() is None:
                subprocess.run(taskkillCommand(pid), capture_output=True, **hiddenConsoleArgs())
        for process in self._treeSnapshot:
            try:
                process.kill() if hard else process.terminate()
            except Exception:  # noqa: BLE001 - already gone or not ours any more
                pass
        if onWindows():
            return
        if self._groupMayExist():
            try:
                os.killpg(pid, signal.SIGKILL if hard else signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                pass

    def _groupMayExist(self) -> bool:
        """True while some process of the run's group lives (so its id cannot have been reused): the
        leader is not reaped yet, or a descendant still holds the output pipe open."""
        readerAlive = self._readerThread is not None and self._readerThread.is_alive()
        return self._proc.returncode is None or readerAlive

    def _killAfterGrace(self) -> None:
        # The reader thread ends once every process holding the output pipe is gone and the
        # launcher is reaped; until then something of the tree is alive. Windows: no grace period.
        if self._readerThread is not None and not onWindows():
            self._readerThread.join(self.killGraceS)
        if self._groupMayExist() or any(_alive(p) for p in self._treeSnapshot):
            self._signalTree(hard=True)

    # -- cleaning up -----------------------------------------------------------------------------
    def _removeWorkDir(self) -> None:
        if self.workDir is not None:
            shutil.rmtree(self.workDir, ignore_errors=True)

    def cleanup(self, wait: bool = True) -> None:
        """Stop the child if it still runs and remove the temporary folder. Safe to call twice.
        With `wait=False` (the GUI) it returns at once: the reader thread removes the folder as soon
        as the process tree is gone."""
        if self.state is RunState.RUNNING:
            self.cancel()
        if self._readerThread is not None and self._readerThread.is_alive():
            if not wait:
                return
            self._readerThread.join(self.killGraceS + 5.0)
        self._removeWorkDir()


def _alive(process) -> bool:
    try:
        return process.is_running() and process.status() != "zombie"
    except Exception:  # noqa: BLE001
        return False
