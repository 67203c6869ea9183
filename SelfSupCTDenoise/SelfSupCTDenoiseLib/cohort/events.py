"""What a cohort run tells while it runs: a JSON-lines event log for other tools, and one progress
line on the terminal (volumes done / running / failed / queued, rate and ETA).

Each log line is one JSON object, written and flushed as it happens (follow it with `tail -f`):
`{"time": ISO 8601, "elapsed_s": seconds since the run began, "run": run id, "event": ..., ...}`.
Events: `run_started` (volumes, to_do, skipped, resources), `skipped` (output already complete),
`queued`, `started` (host, pid, attempt), `retry` (attempt > 1: the previous attempt's worker died
or raised an unexpected error), `phase` (loading, noise, adapt, infer, writing, qc), `done` (seconds,
device), `failed` (error), `cancelled`, `report` (path) and `run_finished` (counts, seconds).
"""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, Optional

from ..files.names import shown


class EventLog:
    """Appends events to a JSON-lines file (several runs into one OUTDIR share it, told apart by run id)."""

    def __init__(self, path: Optional[Path], run_id: str) -> None:
        self.run_id, self.started = run_id, time.perf_counter()
        self.path = Path(path) if path is not None else None
        self._file = open(self.path, "a", encoding="utf-8") if self.path is not None else None

    def write(self, event: str, **fields: Any) -> Dict[str, Any]:
        record = {"time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
                  "elapsed_s": round(time.perf_counter() - self.started, 3), "run": self.run_id, "event": event}
        record.update((key, value) for key, value in fields.items() if key not in record)
        if self._file is not None:
            self._file.write(json.dumps(record, default=str) + "\n")
            self._file.flush()
        return record

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class CohortProgress:
    """One tqdm bar over the volumes to do, with running / failed / queued counts; per-volume lines
    above it. The ETA is tqdm's: the volumes left at the rate volumes finished so far."""

    def __init__(self, total: int, enabled: bool = True) -> None:
        self.enabled = enabled and total > 0
        self.bar = None
        if self.enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc="cohort", unit="vol", file=sys.stderr, dynamic_ncols=True,
                            smoothing=0.1)

    def update(self, finished: int, running: int, failed: int, queued: int) -> None:
        if self.bar is None:
            return
        self.bar.set_postfix_str(f"running {running}, failed {failed}, queued {queued}", refresh=False)
        self.bar.update(finished - self.bar.n)

    def line(self, text: str) -> None:
        """A line above the bar (a volume done or failed: its name escaped, files.names.shown)."""
        if self.bar is not None:
            self.bar.write(shown(text), file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
