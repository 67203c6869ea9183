"""Terminal progress for the CLI: one tqdm bar per phase, fed by ProgressEvents."""

from __future__ import annotations

import sys
from typing import Optional

from tqdm import tqdm

from ..engine.progress import ProgressEvent
from ..files.names import shown


class TqdmProgress:
    """A ProgressCallback that draws a bar per phase (and prints phase messages once)."""

    def __init__(self, enabled: bool = True, prefix: str = "") -> None:
        self.enabled, self.prefix = enabled, shown(prefix)
        self.bar: Optional[tqdm] = None
        self.phase: Optional[str] = None

    def __call__(self, event: ProgressEvent) -> None:
        if not self.enabled:
            return
        if event.phase != self.phase or self.bar is None or (event.total and self.bar.total != event.total):
            self.close()
            self.phase = event.phase
            if event.total:
                self.bar = tqdm(total=event.total, desc=f"{self.prefix}{event.phase}", unit="step",
                                leave=False, file=sys.stderr, dynamic_ncols=True)
        if self.bar is not None and event.total:
            self.bar.n = event.step
            if event.loss is not None:
                self.bar.set_postfix(loss=f"{event.loss:.3g}", refresh=False)
            self.bar.refresh()
        if event.message and event.total == 0 or (event.message and "memory" in event.message):
            left = f" (about {event.eta_s:.0f} s left)" if event.eta_s is not None and not event.total else ""
            tqdm.write(f"{self.prefix}{event.phase}: {shown(event.message)}{left}", file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
