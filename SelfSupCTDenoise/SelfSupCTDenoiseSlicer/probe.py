"""This computer's speed for the panel's first estimate: the worker's `--probe` in a child process.

Started in the background (the GUI never waits: a reader thread waits for the answer); `costs` is
set once the worker answered, `message` says why not if it could not. No Slicer, Qt or torch here.
"""

import logging
import threading
import time
from pathlib import Path
from typing import Any, Dict, Optional

from .runner import WorkerRunner, parseWorkerLine

logger = logging.getLogger(__name__)


class SpeedProbe:
    """One run of the worker's `--probe` with `bundle` on `device` ("cpu" or "cuda") and `threads`,
    launched through `runner` (its command, environment and Python path)."""

    def __init__(self, runner: WorkerRunner, bundle: Path, device: str, threads: int = 0):
        self.costs: Optional[Dict[str, Any]] = None  # the answer's unit costs (stepS, sliceS, startupS)
        self.message = ""  # why there are none, once it finished without them
        self._done = threading.Event()
        arguments = ["--probe", "--bundle", str(Path(bundle).resolve()), "--device", device,
                     "--threads", str(int(threads)), "--launched-at", repr(time.time())]
        try:
            process = runner.launch(arguments, forceCpu=device == "cpu")
        except OSError as exc:
            self._finish(None, f"could not start {runner.command[0]}: {exc}")
            return
        threading.Thread(target=self._read, args=(process,), name="SelfSupCTDenoise-probe", daemon=True).start()

    def _read(self, process) -> None:
        answer: Dict[str, Any] = {}
        last = ""
        try:
            for line in process.stdout:
                message = parseWorkerLine(line)
                if message is not None:
                    answer = message
                elif line.strip():
                    last = line.strip()
        finally:
            process.stdout.close()
            code = process.wait()
            if code == 0 and answer.get("event") == "probe":
                self._finish(answer["costs"])
            else:
                self._finish(None, answer.get("message") or f"it stopped (exit code {code}): {last[:300]}")

    def _finish(self, costs: Optional[Dict[str, Any]], message: str = "") -> None:
        self.costs, self.message = costs, message
        if message:
            logger.warning("SelfSupCTDenoise: the probe of this computer's speed failed, so the time estimate "
                           "is another computer's until a first run here: %s", message)
        self._done.set()

    @property
    def running(self) -> bool:
        return not self._done.is_set()

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Block until the probe has finished (scripts and tests); False if `timeout` ran out first."""
        return self._done.wait(timeout)
