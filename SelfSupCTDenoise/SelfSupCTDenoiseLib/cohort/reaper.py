"""A local Ray ends with the cohort that started it, however the cohort ends.

Ray ties its GCS server and raylet to the driver (on Linux they get SIGKILL when it dies), not the
agents the raylet starts: after a failed start, or with the driver killed, those were seen running
for minutes. A watcher process (this file run as a script: no package import, the standard library
only), started before Ray, waits until the driver closes its end of a pipe (it ends, or dies), then
kills every process of this user (but the driver) whose command line or environment names the run's
private Ray folder (Ray's workers replace their command line by a title; they inherit the token's
path), and every process the driver started after the watcher (its descendants, looked up every
half second while it waits: Ray's agents retitle themselves over both their command line and their
environment, and a SIGKILLed driver's descendants are re-parented away from it), and removes the folder. It runs in a session of its own, so that the Ctrl-C or SIGTERM sent to the driver's
process group does not end it first.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

#: Seconds the watcher keeps looking for processes of the folder (one being started as the driver died).
SWEEP_S = 2.0


def start_reaper(folder: Path) -> subprocess.Popen:
    """The watcher of `folder`; it acts when the returned process's stdin is closed (or the caller dies)."""
    return subprocess.Popen([sys.executable, str(Path(__file__).resolve()), str(folder)], stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def stop_reaper(reaper: subprocess.Popen, timeout_s: float = 3 * SWEEP_S) -> None:
    """Let the watcher act now and wait for it (the caller's Ray has been stopped)."""
    reaper.stdin.close()
    try:
        reaper.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        pass  # it goes on on its own


def processes_naming(folder: str, spare=()):
    """Pids of this user's processes whose command line or environment contains `folder` (Linux: /proc;
    elsewhere none), but this one and those in `spare`."""
    if not os.path.isdir("/proc"):
        return
    needle, uid = os.fsencode(folder), os.getuid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in (os.getpid(), *spare):
            continue
        try:
            if os.stat(f"/proc/{entry}").st_uid != uid:
                continue
            for part in ("cmdline", "environ"):
                with open(f"/proc/{entry}/{part}", "rb") as handle:
                    if needle in handle.read():
                        yield int(entry)
                        break
        except OSError:  # gone meanwhile, or not ours to read
            continue


def _started(pid: int):
    """(parent pid, start time) of a process from /proc/PID/stat, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()
        return int(fields[1]), int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def descendants(root: int):
    """{pid: start time} of the processes below `root` (Linux: /proc; elsewhere none)."""
    if not os.path.isdir("/proc"):
        return {}
    table = {int(e): _started(int(e)) for e in os.listdir("/proc") if e.isdigit()}
    below, found = {root}, {}
    while True:
        new = {pid: info[1] for pid, info in table.items() if info and info[0] in below and pid not in found}
        if not new:
            return found
        found.update(new)
        below = set(new)


def _reap(folder: str) -> None:
    driver = os.getppid()  # it may still be finishing (its own environment names the folder)
    before = set(descendants(driver))  # the driver's own children from before its Ray are not Ray's
    started = {}
    while not select.select([sys.stdin], [], [], 0.5)[0]:  # until the driver closes the pipe, or dies
        started.update((pid, at) for pid, at in descendants(driver).items() if pid not in before)
    sys.stdin.buffer.read()
    deadline = time.monotonic() + SWEEP_S
    while True:
        ours = [pid for pid, at in started.items() if (_started(pid) or (0, None))[1] == at]
        for pid in {*processes_naming(folder, spare=(driver,)), *ours}:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        if time.monotonic() > deadline:
            break
        time.sleep(0.2)
    shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _reap(sys.argv[1])
