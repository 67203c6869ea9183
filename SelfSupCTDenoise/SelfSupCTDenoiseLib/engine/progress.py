"""Progress reporting and cancellation shared by the CLI, the worker process and the Slicer panel.

A run reports `ProgressEvent`s through a plain callable and checks a `CancelToken` at least once per
adaptation step and per inference batch. Between processes an event travels as one JSON line.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import asdict, dataclass
from typing import Callable, Optional

from ..errors import Cancelled

#: Phases in the order a run goes through them.
PHASES = ("loading", "noise", "adapt", "infer", "writing", "done")


@dataclass
class ProgressEvent:
    phase: str
    step: int = 0
    total: int = 0
    loss: Optional[float] = None
    eta_s: Optional[float] = None
    message: str = ""

    def to_json(self) -> str:
        return json.dumps({"event": "progress", **asdict(self)})

    @classmethod
    def from_json(cls, line: str) -> Optional["ProgressEvent"]:
        """Parse one line written by `to_json`; anything else (garbage, other events) gives None."""
        try:
            data = json.loads(line)
        except (ValueError, TypeError):
            return None
        if not isinstance(data, dict) or data.get("event") != "progress":
            return None
        try:
            return cls(**{k: data[k] for k in ("phase", "step", "total", "loss", "eta_s", "message") if k in data})
        except TypeError:
            return None

    def describe(self) -> str:
        text = {"loading": "Loading", "noise": "Generating pseudo-noise", "adapt": "Adapting",
                "infer": "Denoising", "writing": "Writing", "done": "Done"}.get(self.phase, self.phase)
        if self.total:
            text += f" {self.step}/{self.total}"
        if self.loss is not None:
            text += f", loss {self.loss:.3g}"
        if self.eta_s is not None:
            text += f", about {self.eta_s:.0f} s left"
        return text + (f" ({self.message})" if self.message else "")


ProgressCallback = Callable[[ProgressEvent], None]


class CancelToken:
    """Thread-safe flag; long loops call `raise_if_cancelled()`."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise Cancelled("Cancelled by the user; nothing was written.")


class PhaseTimer:
    """Reports one phase with a running ETA estimated from the mean time per completed step."""

    def __init__(self, phase: str, total: int, progress: Optional[ProgressCallback],
                 cancel: Optional[CancelToken] = None, message: str = ""):
        self.phase, self.total, self.progress, self.cancel, self.message = phase, total, progress, cancel, message
        self.start = time.perf_counter()
        self.emit(0)

    def emit(self, step: int, loss: Optional[float] = None) -> None:
        if self.cancel is not None:
            self.cancel.raise_if_cancelled()
        if self.progress is None:
            return
        elapsed = time.perf_counter() - self.start
        eta = elapsed / step * (self.total - step) if step > 0 and self.total else None
        self.progress(ProgressEvent(self.phase, step, self.total, loss, eta, self.message))
