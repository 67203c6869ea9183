"""A cohort on a real two-node Ray cluster on this machine (a head and a second node, each started
with `ray start`, on 127.0.0.1 with a token): the second node is lost (every process of it killed)
while one of its volumes adapts; that volume reruns on the head, nothing half-written counts as done,
the QC page is complete. And a cohort killed with SIGKILL leaves nothing of its local Ray behind (SIGTERM:
test_batch_trust.py)."""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from SelfSupCTDenoiseLib.files.provenance_io import read_sidecar
from test_batch_trust import _Run
from test_cohort import FAST, events, leftovers, save_volume

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                                reason="the cohort extra (ray[default]) is not installed")
VOLUMES = [f"scan{i}.nrrd" for i in range(4)]
#: Adaptation long enough that the node is lost while a volume of it adapts (seconds on 2 cores).
STEPS = 60
#: Seconds Ray's processes may outlive the cohort that started them.
OUTLIVE_S = 10.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(tmp_path: Path) -> dict:
    token = tmp_path / "auth_token"
    if not token.exists():
        token.write_text(os.urandom(32).hex())
        token.chmod(0o600)
    # without the switch a local cohort run earlier in this process set ("0": loopback only), under which
    # `ray start` refuses to join a second node
    inherited = {k: v for k, v in os.environ.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
    return {**inherited, "PYTHONPATH": str(ROOT / "SelfSupCTDenoise"), "OMP_NUM_THREADS": "1",
            "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token), "RAY_USAGE_STATS_ENABLED": "0",
            # a lost node is declared dead after 2 missed health checks a second apart (Ray: 5, 3 s)
            "RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "2"}


def _processes_under(folder: str):
    """Ray's processes whose command line names `folder` (gcs_server, raylets, agents) and their children
    (workers: their title replaces their command line)."""
    found = {}
    for process in psutil.process_iter(["cmdline"]):
        if folder in " ".join(process.info["cmdline"] or []):
            found[process.pid] = process
            for child in process.children(recursive=True):
                found[child.pid] = child
    return found


def _kill_all(processes) -> None:
    for process in processes:
        try:
            process.kill()
        except psutil.Error:
            pass


@pytest.fixture
def two_nodes(tmp_path_factory):
    """A head (1 CPU, resource "head") and a second node (1 CPU, resource "second") on 127.0.0.1, in
    a temporary folder of their own; every process of theirs killed at the end (never `ray stop`,
    which stops every Ray of this machine)."""
    folder = tempfile.mkdtemp(prefix="ray2n-")  # short: Ray's socket paths must fit 107 bytes
    env = _env(Path(folder))
    ray = str(Path(sys.executable).parent / "ray")
    port = _free_port()
    common = ["--num-gpus=0", "--disable-usage-stats"]

    def agent_ports():
        return [f"--dashboard-agent-listen-port={_free_port()}", f"--dashboard-agent-grpc-port={_free_port()}",
                f"--metrics-export-port={_free_port()}", f"--runtime-env-agent-port={_free_port()}"]

    try:
        subprocess.run([ray, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
                        f"--temp-dir={folder}", "--num-cpus=1", '--resources={"head": 1}', "--include-dashboard=false",
                        *common, *agent_ports()], env=env, check=True, capture_output=True, timeout=120)
        head = {p.pid for p in _processes_under(folder).values() if p.name() == "raylet"}
        for attempt in range(2):  # Ray gives a node a fixed 30 s to start, which a loaded machine can miss
            second = subprocess.run([ray, "start", f"--address=127.0.0.1:{port}", "--node-ip-address=127.0.0.1",
                                     "--num-cpus=1", f"--temp-dir={folder}/second", '--resources={"second": 1}',
                                     *common, *agent_ports()], env=env, capture_output=True, text=True, timeout=120)
            if second.returncode == 0:
                break
        assert second.returncode == 0, (second.stdout + second.stderr)[-3000:]
        raylets = {p.pid: p for p in _processes_under(folder).values() if p.name() == "raylet"}
        assert len(head) == 1 and len(raylets) == 2
        second = next(p for pid, p in raylets.items() if pid not in head)
        yield {"address": f"127.0.0.1:{port}", "env": env, "folder": folder, "second": second,
               "head": raylets[head.pop()]}
    finally:
        _kill_all(_processes_under(folder).values())
        subprocess.run(["rm", "-rf", folder], check=False)


def _node_of(pid: int, raylets) -> str:
    """Which node runs worker `pid`: the raylet it descends from."""
    try:
        parents = {process.pid for process in psutil.Process(pid).parents()}
    except psutil.Error:
        return "?"
    return next((name for name, raylet in raylets.items() if raylet.pid in parents), "?")


def test_a_lost_nodes_volume_reruns_on_the_head_and_nothing_half_written_counts(two_nodes, tiny_bundle, tmp_path):
    (tmp_path / "in").mkdir()
    for i, name in enumerate(VOLUMES):
        save_volume(tmp_path / "in" / name, seed=70 + i, slices=2, size=32)
    out, log = tmp_path / "out", tmp_path / "events.jsonl"
    raylets = {"head": two_nodes["head"], "second": two_nodes["second"]}
    driver = subprocess.Popen([sys.executable, "-m", "SelfSupCTDenoiseLib", "cohort", str(tmp_path / "in"), str(out),
                               "--address", two_nodes["address"], "--events", str(log), "--bundle",
                               str(tiny_bundle.path), *FAST, "--steps", str(STEPS), "--max-retries", "2"],
                              env=two_nodes["env"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    nodes, lost = {}, None  # (volume, attempt) -> the node it started on; the volume whose node was lost
    deadline = time.monotonic() + 240
    while driver.poll() is None and time.monotonic() < deadline:
        try:
            log_events = events(log) if log.exists() else []
        except ValueError:  # a line being written
            continue
        for event in log_events:
            if event["event"] == "started" and (event["volume"], event["attempt"]) not in nodes:
                nodes[event["volume"], event["attempt"]] = _node_of(event["pid"], raylets)
            if (lost is None and event["event"] == "phase" and event["phase"] == "adapt"
                    and nodes.get((event["volume"], 1)) == "second"):
                lost = event["volume"]  # every process of the node at once, as when its machine goes down
                _kill_all([two_nodes["second"], *two_nodes["second"].children(recursive=True)])
        time.sleep(0.05)
    output = driver.communicate(timeout=30)[0]
    assert lost is not None, output
    assert driver.returncode == 0, output
    log_events = events(log)
    assert [key for key in sorted(nodes) if key[0] == lost] == [(lost, 1), (lost, 2)]
    assert (nodes[lost, 1], nodes[lost, 2]) == ("second", "head")
    assert sorted(e["volume"] for e in log_events if e["event"] == "done") == VOLUMES
    assert leftovers(out) == []
    for name in VOLUMES:  # every output whole, each with its sidecar and its QC
        target = out / name.replace(".nrrd", "_denoised.nrrd")
        assert read_sidecar(target)["input"] == name and read_sidecar(target)["parameters"]["steps"] == STEPS
        assert (out / "qc" / f"{target.name}.json").is_file() and (out / "qc" / f"{target.name}.png").is_file()
    report = (out / "report.html").read_text(encoding="utf-8")
    assert sorted(set(re.findall(r'data-volume="([^"]+)"', report))) == VOLUMES


def alive_after(processes, seconds: float):
    """Those of `processes` still running (zombies are dead) after waiting up to `seconds` for them."""
    deadline = time.monotonic() + seconds
    while True:
        alive = []
        for process in processes:
            try:
                if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                    alive.append(process)
            except psutil.Error:
                pass
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.2)


def test_a_killed_cohort_leaves_nothing_of_its_ray_running(tiny_bundle, tmp_path):
    (tmp_path / "in").mkdir()
    save_volume(tmp_path / "in" / "v.nrrd", seed=5, slices=2, size=32)
    log = tmp_path / "out" / "cohort_events.jsonl"
    run = _Run(["cohort", tmp_path / "in", tmp_path / "out", "--bundle", tiny_bundle.path, "--workers", "1",
                *FAST, "--steps", "3000"], tmp_path)
    ray_processes = []

    def adapting():  # then every process of its Ray (GCS, raylet, agents, workers) is up
        try:
            ready = log.exists() and any(e["event"] == "phase" and e["phase"] == "adapt" for e in events(log))
        except ValueError:
            return False
        if ready:
            ray_processes[:] = psutil.Process(run.proc.pid).children(recursive=True)
            names.update((p.pid, p.name()) for p in ray_processes)
        return ready

    names = {}
    returncode, err = run.signal_when(adapting, signal.SIGKILL)
    assert returncode == -signal.SIGKILL
    assert {"gcs_server", "raylet"} <= set(names.values()), names
    assert [names[p.pid] for p in alive_after(ray_processes, OUTLIVE_S)] == []
