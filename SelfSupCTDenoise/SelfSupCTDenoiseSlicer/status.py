"""Turns the worker's progress events into one progress bar value, a status line and phase timings."""

import time
from typing import Callable, Dict, Optional, Sequence, Tuple

from SelfSupCTDenoiseLib.engine.progress import ProgressEvent

from .settings import formatDuration, inferredScale

#: Share of the bar (percent start, end) per phase. "guard" is the engine's short check of the
#: adapted model on a few slices; it reports as "infer" with fewer slices than the volume has.
RANGES_ADAPT = {"loading": (0, 3), "noise": (3, 10), "adapt": (10, 70), "guard": (70, 75),
                "infer": (75, 96), "writing": (96, 99), "importing": (99, 100)}
RANGES_PRETRAINED = {"loading": (0, 5), "noise": (5, 5), "adapt": (5, 5), "guard": (5, 5),
                     "infer": (5, 94), "writing": (94, 99), "importing": (99, 100)}


class ProgressTracker:
    """Feed it every `ProgressEvent`; read `percent` (never goes back) and `statusText`."""

    def __init__(self, numSlices: int, steps: int, clock: Callable[[], float] = time.monotonic):
        self.numSlices, self.steps, self.clock = numSlices, steps, clock
        self.ranges = RANGES_ADAPT if steps > 0 else RANGES_PRETRAINED
        self.startTime = clock()
        self.percent = 0
        self.statusText = "Starting..."
        self.lastEvent: Optional[ProgressEvent] = None
        self._phaseTimes: Dict[str, Tuple[float, float]] = {}

    def phaseKey(self, event: ProgressEvent) -> str:
        if event.phase == "infer" and event.total and event.total != self.numSlices:
            return "guard"
        return event.phase

    def update(self, event: ProgressEvent, at: Optional[float] = None) -> None:
        """`at`: when the event arrived (same clock), if it is being handled later."""
        key = self.phaseKey(event)
        now = self.clock() if at is None else at
        first, _ = self._phaseTimes.get(key, (now, now))
        self._phaseTimes[key] = (first, now)
        start, end = self.ranges.get(key, (self.percent, self.percent))
        fraction = min(1.0, event.step / event.total) if event.total else 0.0
        self.percent = max(self.percent, int(start + (end - start) * fraction))
        self.lastEvent = event
        self.statusText = f"{event.describe()} - elapsed {formatDuration(self.elapsed)}"

    def setImporting(self) -> None:
        self.percent = max(self.percent, self.ranges["importing"][0])
        self.statusText = f"Creating the output volumes - elapsed {formatDuration(self.elapsed)}"

    @property
    def elapsed(self) -> float:
        return self.clock() - self.startTime

    def phaseSeconds(self, key: str) -> float:
        first, last = self._phaseTimes.get(key, (0.0, 0.0))
        return last - first

    def measuredCosts(self, arrayShape: Sequence[int], config: Dict, numNoiseModels: int,
                      totalSeconds: float, bodyShare: float = 1.0) -> Dict[str, float]:
        """Unit costs in the form of `settings.DEFAULT_COSTS`, from this run's phase timings; only
        the costs this run exercised are returned. `bodyShare`: the run's `body_fraction` (a slice's
        cost is that of a whole one, whatever share of it this volume's body took)."""
        slices, rows, columns = arrayShape
        pixelScale = rows * columns / 512.0 ** 2
        costs: Dict[str, float] = {}
        work = 0.0
        if self.phaseSeconds("infer") > 0:
            costs["sliceS"] = self.phaseSeconds("infer") / (slices * inferredScale(config, pixelScale, bodyShare))
            work += self.phaseSeconds("infer")
        steps = int(config.get("steps", 0))
        if steps > 0 and self.phaseSeconds("adapt") > 0:
            patchScale = config.get("batch_size", 16) / 16.0 * (config.get("patch_size", 64) / 64.0) ** 2
            costs["stepS"] = self.phaseSeconds("adapt") / (steps * patchScale)
            work += self.phaseSeconds("adapt")
        if self.phaseSeconds("noise") > 0:
            pool = min(slices, int(config.get("adapt_slices", 32)))
            costs["noiseSliceS"] = self.phaseSeconds("noise") / (numNoiseModels * pool * pixelScale)
            work += self.phaseSeconds("noise")
        work += self.phaseSeconds("guard")
        costs["startupS"] = max(0.0, totalSeconds - work)
        return costs
