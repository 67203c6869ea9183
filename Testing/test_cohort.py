"""Cohorts on a real local Ray (2 CPUs, started once for the session): outputs equal to the serial
batch's, a bad file reported, a killed worker retried with nothing half-written, resume, Ctrl-C, the
servers on 127.0.0.1 only, and the QC report in headless Chromium. Inputs (folders, list files, CSV
manifests) and the report's flags are tested without Ray."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from SelfSupCTDenoiseLib.cli import main
from SelfSupCTDenoiseLib.data.phantom import noisy_pair
from SelfSupCTDenoiseLib.engine.config import AdaptConfig
from SelfSupCTDenoiseLib.errors import InputError
from SelfSupCTDenoiseLib.files.provenance_io import read_sidecar, sidecar_path

FAST = ["--steps", "5", "--period", "5", "--batch-size", "4", "--patch-size", "32", "--threads", "1", "--quiet"]
#: The volume whose worker is killed: adapting long enough to be caught mid-run.
VICTIM, VICTIM_STEPS = "case3.nrrd", 150
GOOD = [f"case{i}.nrrd" for i in range(8)]


def save_volume(path: Path, seed: int, slices: int = 4, size: int = 56) -> Path:
    image = sitk.GetImageFromArray(np.round(noisy_pair(slices, size, 30.0, seed=seed)[0]).astype(np.int16))
    image.SetSpacing((2.0, 2.0, 3.0))  # 15 mm uniform-tissue boxes fit in 56 px
    sitk.WriteImage(image, str(path), True)
    return path


def read_array(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def events(path: Path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def leftovers(folder: Path):
    """Temporaries of the engine or private folders of cohort tasks."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith((".selfsupctdenoise-",
                                                                         ".selfsupctdenoise.cohort-")))


# ------------------------------------------------------------------------------------------------
# Without Ray

def test_inputs_from_folders_list_files_and_manifests(tmp_path):
    from SelfSupCTDenoiseLib.cohort.inputs import read_cohort

    folder = tmp_path / "study"
    folder.mkdir()
    for i in range(2):
        save_volume(folder / f"a{i}.nrrd", i, slices=2, size=16)
    other = tmp_path / "other"
    other.mkdir()
    save_volume(other / "b.nrrd", 5, slices=2, size=16)
    (tmp_path / "list.txt").write_text("# one path a line\nother/b.nrrd\n\n")
    (tmp_path / "m.csv").write_text("path,--steps,Strength,pseudo-noise,output\nstudy/a0.nrrd,7,low,,first.nrrd\n"
                                    "study/a1.nrrd,,0.3,gaussian,\n")
    base = AdaptConfig(steps=3)
    volumes = read_cohort([tmp_path / "m.csv", tmp_path / "list.txt"], tmp_path / "out", base, noise_maps=True)
    assert [v.source for v in volumes] == [folder / "a0.nrrd", folder / "a1.nrrd", other / "b.nrrd"]
    assert [v.target.name for v in volumes] == ["first.nrrd", "a1_denoised.nrrd", "b_denoised.nrrd"]
    assert [v.noise_map.name for v in volumes] == ["first.nrrd", "a1_noise_map.nrrd", "b_noise_map.nrrd"]
    assert [(v.config.steps, v.config.strength, v.config.pseudo_noise) for v in volumes] == [
        (7, 0.5, "fitted"), (3, 0.3, "gaussian"), (3, 1.0, "fitted")]
    assert [v.index for v in volumes] == [0, 1, 2]
    folder_volumes = read_cohort([folder], tmp_path / "out", base)
    assert [v.target for v in folder_volumes] == [(tmp_path / "out" / f"a{i}_denoised.nrrd").absolute() for i in (0, 1)]
    assert all(v.noise_map is None for v in folder_volumes)
    for text, message in [("path,stepz\nstudy/a0.nrrd,3\n", "unknown column(s) stepz"),
                          ("path,steps\nstudy/a0.nrrd,many\n", "line 2: steps takes an integer"),
                          ("path,steps\nstudy/a0.nrrd,-1\n", "steps must be >= 0"),
                          ("path,threads\nstudy/a0.nrrd,2\n", "unknown column(s) threads"),
                          ("path,output\nstudy/a0.nrrd,../x.nrrd\n", "must be a file name inside OUTDIR")]:
        (tmp_path / "bad.csv").write_text(text)
        with pytest.raises(InputError, match=re.escape(message)):
            read_cohort([tmp_path / "bad.csv"], tmp_path / "out", base)
    save_volume(other / "a0.nrrd", 6, slices=2, size=16)
    with pytest.raises(InputError, match="a0.nrrd would both be written to a0_denoised.nrrd"):
        read_cohort([folder, other / "a0.nrrd"], tmp_path / "out", base)
    assert [v.source.name for v in read_cohort([folder, folder / "a0.nrrd"], tmp_path / "out", base)] == [
        "a0.nrrd", "a1.nrrd"]  # given twice, done once


def test_serial_batch_refuses_two_inputs_that_would_write_one_output(tmp_path, capsys):
    # before: the second ct.nrrd was taken for "already complete" (or overwrote the first), exit 0
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        save_volume(tmp_path / name / "ct.nrrd", seed=1, slices=2, size=16)
    code = main(["denoise", str(tmp_path / "a" / "ct.nrrd"), str(tmp_path / "b" / "ct.nrrd"), str(tmp_path / "out"),
                 "--steps", "0", "--quiet"])
    assert code == 2 and "would both be written to ct_denoised.nrrd" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_report_flags_and_order_follow_the_qc_numbers(tmp_path):
    from SelfSupCTDenoiseLib.cohort.qc import flags
    from SelfSupCTDenoiseLib.cohort.report import _order

    clean = {"method_noise_level": "noise", "method_noise_score": 0.02, "hu_shift_within_tolerance": True,
             "hu_shift_hu": 0.3, "estimated_noise_hu": 30.0, "noise_sd_input_hu": 30.0}
    assert flags(clean) == []
    worst = {**clean, "method_noise_level": "structure", "method_noise_score": 0.61,
             "method_noise_reading": "noise map contains structure", "hu_shift_within_tolerance": False,
             "hu_shift_hu": -3.4, "hu_shift_tolerance_hu": 2.0, "guard_fell_back": True, "guard_reason": "diverged"}
    assert [level for level, _ in flags(worst)] == ["flag", "flag", "flag"]
    assert "-3.4 HU outside +/-2 HU" in flags(worst)[1][1] and "diverged" in flags(worst)[2][1]
    assert flags(None, "unreadable") == [("flag", "failed: unreadable")]
    rows = [{"input": "a", "qc": clean}, {"input": "b", "qc": worst}, {"input": "c", "qc": None, "error": "x"},
            {"input": "d", "qc": {**clean, "method_noise_level": "borderline", "method_noise_score": 0.2,
                                  "method_noise_reading": "some structure"}}]
    assert [r["input"] for r in _order(rows)] == ["b", "c", "d", "a"]


def test_a_local_rays_folder_and_token_are_the_users_only_and_go_with_it(tmp_path, monkeypatch):
    # what the local Ray of test_ray_sees_an_opaque_id... is given, without Ray: a folder of mode 0o700, a
    # token of the run's own (0o600), both gone at the end; a token the user names stays the one used
    import tempfile

    from SelfSupCTDenoiseLib.cohort.scheduler import _PrivateRayFolder

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    for name in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)
    folder = _PrivateRayFolder()
    token = Path(os.environ["RAY_AUTH_TOKEN_PATH"])
    assert folder.path.parent == tmp_path and folder.ray_dir.parent == folder.path and token.parent == folder.path
    assert stat.S_IMODE(folder.path.stat().st_mode) == 0o700 and stat.S_IMODE(token.stat().st_mode) == 0o600
    assert re.fullmatch("[0-9a-f]{64}", token.read_text())
    folder.remove()
    assert not folder.path.exists() and "RAY_AUTH_TOKEN_PATH" not in os.environ
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "theirs"))
    folder = _PrivateRayFolder()
    assert sorted(folder.path.iterdir()) == [] and os.environ["RAY_AUTH_TOKEN_PATH"] == str(tmp_path / "theirs")
    folder.remove()
    assert os.environ["RAY_AUTH_TOKEN_PATH"] == str(tmp_path / "theirs")


@pytest.mark.parametrize("ending", ["killed", "stopped"])
def test_what_names_a_local_rays_folder_ends_with_the_driver(tmp_path, ending):
    # before: the agents of a local Ray (children of its raylet, the folder on their command line) lived on
    # for minutes after a failed start or a killed cohort. Here a driver makes the folder and two children
    # as Ray's: one naming the folder on its command line (an agent), one in its environment (a worker)
    import psutil

    from conftest import ROOT

    driver = ("import subprocess, sys, time\n"
              "from SelfSupCTDenoiseLib.cohort.scheduler import _PrivateRayFolder\n"
              "folder = _PrivateRayFolder()\n"
              "sleep = [sys.executable, '-c', 'import time; time.sleep(600)']\n"
              "children = [subprocess.Popen(sleep + [str(folder.ray_dir)]), subprocess.Popen(sleep)]\n"
              "print(folder.path, *(c.pid for c in children), flush=True)\n"
              f"if {ending == 'stopped'}: folder.remove(); print('removed', flush=True)\n"
              "time.sleep(600)\n")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")}
    env.update(RAY_AUTH_MODE="token", PYTHONPATH=str(ROOT / "SelfSupCTDenoise"), TMPDIR=str(tmp_path))
    process = subprocess.Popen([sys.executable, "-c", driver], env=env, stdout=subprocess.PIPE, text=True)
    try:
        folder, *pids = process.stdout.readline().split()
        children = [psutil.Process(int(pid)) for pid in pids]
        assert all(child.is_running() for child in children) and Path(folder).is_dir()
        if ending == "killed":
            process.kill()
        else:
            assert process.stdout.readline().strip() == "removed"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (Path(folder).exists() or any(
                c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in children)):
            time.sleep(0.2)
        assert [c.pid for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE] == []
        assert not Path(folder).exists()
        assert (process.poll() is None) == (ending == "stopped")  # the driver itself is spared
    finally:
        process.kill()
        process.wait()
def test_the_report_covers_every_output_of_the_folder_with_its_own_settings(tiny_bundle, tmp_path):
    # before: the page listed this run's volumes only, under the command line's settings
    from SelfSupCTDenoiseLib.cohort.report import folder_rows, write_report

    out = tmp_path / "out"
    out.mkdir()
    for seed, (name, settings) in enumerate([("a.nrrd", ["--strength", "0.5"]),
                                             ("b.nrrd", ["--strength", "0.75", "--seed", "3"])]):
        save_volume(tmp_path / name, seed=50 + seed, slices=2, size=32)
        assert main(["denoise", str(tmp_path / name), str(out), "--bundle", str(tiny_bundle.path), *FAST,
                     "--steps", "0", *settings]) == 0
    (out / "notes.json").write_text('{"not": "a sidecar"}')  # another tool's JSON: not an output
    this_run = [{"input": "b.nrrd", "output": "b_denoised.nrrd", "status": "done", "error": None, "qc": None},
                {"input": "c.nrrd", "output": "c_denoised.nrrd", "status": "failed", "error": "Cannot read", "qc": None}]
    page = write_report(out, folder_rows(out, this_run)).read_text(encoding="utf-8")
    rows = dict(re.findall(r'<tr[^>]*data-volume="([^"]+)"[^>]*>(.*?)</tr>', page, re.S))
    assert sorted(rows) == ["a.nrrd", "b.nrrd", "c.nrrd"]
    assert "earlier" in rows["a.nrrd"] and "made in this run" not in rows["a.nrrd"]
    assert "steps 0, strength 0.5, " in rows["a.nrrd"] and "seed" not in rows["a.nrrd"]
    assert "steps 0, strength 0.75, " in rows["b.nrrd"] and "seed 3" in rows["b.nrrd"]
    assert all("period 5" in rows[name] and "bundle " in rows[name] for name in ("a.nrrd", "b.nrrd"))
    assert "made in this run" in rows["b.nrrd"] and "failed: Cannot read" in rows["c.nrrd"]
    assert "1 made in this run" in page


def test_a_task_moves_a_complete_set_into_place_or_nothing(tiny_bundle, tmp_path, monkeypatch):
    import SelfSupCTDenoiseLib.cohort.task as task
    import SelfSupCTDenoiseLib.files.denoise_file as denoise_file_module
    from SelfSupCTDenoiseLib.cohort.inputs import read_cohort
    from SelfSupCTDenoiseLib.commands.denoise import completed_outputs
    from SelfSupCTDenoiseLib.files.volumes import remove_stale_temps

    save_volume(tmp_path / "v.nrrd", seed=3, slices=2, size=32)
    out = tmp_path / "out"
    out.mkdir()
    volume = read_cohort([tmp_path / "v.nrrd"], out, AdaptConfig(steps=0, threads=1), noise_maps=True)[0]
    spec = task.volume_spec(volume, "run1", tiny_bundle.path, None, dicom_out=False, force=False, denoise=True)
    # another volume's denoise_file writing into OUTDIR meanwhile removes the engine's temporaries it
    # finds there: this task's private folder and the files staged in it must survive that
    real_denoise, seen = denoise_file_module.denoise_file, []

    def denoise_then_a_neighbour_starts(source, output, *args, **kwargs):
        info = real_denoise(source, output, *args, **kwargs)
        remove_stale_temps(out, time.time() + 60)
        seen.append(sorted(p.name for p in Path(output).parent.iterdir()))
        return info

    monkeypatch.setattr(denoise_file_module, "denoise_file", denoise_then_a_neighbour_starts)
    real_replace = os.replace

    def interrupted_before_the_sidecar(source, target):  # os.replace of every module: only OUTDIR's sidecar
        if Path(target).parent == out and str(target).endswith(".json"):
            raise KeyboardInterrupt
        real_replace(source, target)

    monkeypatch.setattr(task.os, "replace", interrupted_before_the_sidecar)
    with pytest.raises(KeyboardInterrupt):
        task.process_volume(spec)
    assert seen == [["v_denoised.nrrd", "v_denoised.nrrd.json", "v_noise_map.nrrd"]]
    assert sorted(p.name for p in out.iterdir()) == ["v_denoised.nrrd", "v_noise_map.nrrd"]  # no sidecar
    job = (volume.source, volume.target, volume.noise_map, volume.config)
    assert completed_outputs([job], tiny_bundle.path) == [None]
    monkeypatch.setattr(task.os, "replace", real_replace)
    summary = task.process_volume(spec)  # the next attempt completes it
    assert summary["status"] == "done" and "qc_error" not in summary
    assert sorted(p.name for p in out.iterdir()) == ["qc", "v_denoised.nrrd", "v_denoised.nrrd.json",
                                                     "v_noise_map.nrrd"]
    assert completed_outputs([job], tiny_bundle.path)[0] is not None


# ------------------------------------------------------------------------------------------------
# On a local Ray

@pytest.fixture(scope="module")
def ray_session():
    """One local Ray (2 CPUs, no GPU), started as `cohort` starts it: the only Ray of the test session
    (the tests of this module share it; it is stopped before the other modules run)."""
    if importlib.util.find_spec("ray") is None:  # not importorskip: Ray must be imported by ray_cluster
        pytest.skip("the cohort extra (ray[default]) is not installed")
    from SelfSupCTDenoiseLib.cohort.scheduler import ray_cluster

    with ray_cluster(None, num_cpus=2, num_gpus=0) as ray:
        yield ray


def test_local_ray_listens_on_loopback_only_with_token_auth(ray_session):
    import psutil

    ours = {p.pid for p in psutil.Process().children(recursive=True)} | {os.getpid()}
    listening = [c for c in psutil.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN and c.pid in ours]
    names = {psutil.Process(c.pid).name() for c in listening}
    assert {"gcs_server", "raylet"} <= names  # the servers of this session's Ray were found
    exposed = [(psutil.Process(c.pid).name(), c.laddr) for c in listening
               if c.laddr.ip not in ("127.0.0.1", "::1", "::ffff:127.0.0.1")]
    assert exposed == []
    assert os.environ["RAY_AUTH_MODE"] == "token"


def test_ray_sees_an_opaque_id_not_the_file_name_and_its_files_are_the_owners(ray_session, tiny_bundle, tmp_path):
    # before: task names (the process title `ps` shows) were "selfsupctdenoise <input name>", the job's
    # entrypoint the driver's command line, Ray's folders 0o777 under /tmp/ray, ~/.ray/auth_token 0o644
    import tempfile

    import psutil

    secret = "Pt4711zQ"  # an input name (often a patient ID) found nowhere else
    (tmp_path / "in").mkdir()
    save_volume(tmp_path / "in" / f"{secret}.nrrd", seed=95, slices=2, size=32)
    titles, finished = set(), threading.Event()

    def watch():  # the command lines of this session's Ray processes while the task runs
        while not finished.is_set():
            for process in psutil.Process().children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    titles.add(" ".join(process.cmdline()).strip())  # a title pads its line
            time.sleep(0.02)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        code = main(["cohort", str(tmp_path / "in"), str(tmp_path / "out"), "--bundle", str(tiny_bundle.path), *FAST,
                     "--steps", "40"])
    finally:
        finished.set()
        thread.join(timeout=5)
    assert code == 0
    node = ray_session._private.worker._global_node
    session = Path(node.get_session_dir_path())
    token = Path(os.environ.get("RAY_AUTH_TOKEN_PATH", Path.home() / ".ray" / "auth_token"))
    entrypoints = [job["Entrypoint"] for job in ray_session._private.state.jobs()]

    def mode(path):
        return stat.S_IMODE(path.stat().st_mode)

    def names_the_input(path):
        return secret in path.name or (path.is_file() and secret.encode() in path.read_bytes())

    # Ray's own folders are world-writable: a folder of the user's only must enclose them
    private = [folder for folder in session.parents if Path(tempfile.gettempdir()) in folder.parents
               and mode(folder) == 0o700 and folder.stat().st_uid == os.getuid()]
    problems = {
        "our task not seen running": "ray::selfsupctdenoise-0" not in titles,
        "process titles naming the input": sorted(t for t in titles if secret in t),
        "Ray's files naming the input": sorted(str(p.relative_to(session)) for p in session.rglob("*")
                                               if names_the_input(p)),
        "job entrypoints naming the command line": [e for e in entrypoints if "pytest" in e or "Testing" in e],
        "Ray's folder open to others": "" if private else str(session),
        "token file": f"{token} {oct(mode(token))}" if mode(token) != 0o600 else ""}
    assert not any(problems.values()), problems


@pytest.fixture(scope="module")
def cohort(ray_session, tiny_bundle, tmp_path_factory):
    """A cohort of 8 small volumes and a bad file, from a CSV manifest (the victim adapts longer);
    the worker running the victim is killed (SIGKILL) while it adapts, seen from the event log."""
    root = tmp_path_factory.mktemp("cohort")
    (root / "in").mkdir()
    for i, name in enumerate(GOOD):
        save_volume(root / "in" / name, seed=60 + i)
    (root / "in" / "broken.nrrd").write_text("not a volume")
    rows = [f"{name},{VICTIM_STEPS if name == VICTIM else ''}" for name in GOOD + ["broken.nrrd"]]
    (root / "in" / "cohort.csv").write_text("path,steps\n" + "\n".join(rows) + "\n")
    out = root / "out"
    out.mkdir()
    log = out / "cohort_events.jsonl"
    killed = {}

    def killer():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            lines = events(log) if log.exists() else []
            started = {e["volume"]: e["pid"] for e in lines if e["event"] == "started"}
            if any(e["event"] == "phase" and e["volume"] == VICTIM and e["phase"] == "adapt" for e in lines):
                os.kill(started[VICTIM], signal.SIGKILL)
                killed.update(pid=started[VICTIM], output_then=(out / "case3_denoised.nrrd").exists())
            time.sleep(0.05)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    code = main(["cohort", str(root / "in" / "cohort.csv"), str(out), "--bundle", str(tiny_bundle.path), "--noise-maps",
                 *FAST])
    thread.join(timeout=5)
    return {"root": root, "out": out, "code": code, "killed": killed, "events": events(log)}


def test_cohort_outputs_equal_the_serial_batch(cohort, tiny_bundle, tmp_path):
    out = cohort["out"]
    for name in GOOD:
        steps = VICTIM_STEPS if name == VICTIM else 5
        serial = tmp_path / f"{name}_serial.nrrd"
        assert main(["denoise", str(cohort["root"] / "in" / name), str(serial), "--noise-map",
                     str(tmp_path / f"{name}_noise.nrrd"), "--bundle", str(tiny_bundle.path), *FAST,
                     "--steps", str(steps)]) == 0
        target = out / name.replace(".nrrd", "_denoised.nrrd")
        assert np.array_equal(read_array(target), read_array(serial)), name
        assert np.array_equal(read_array(out / name.replace(".nrrd", "_noise_map.nrrd")),
                              read_array(tmp_path / f"{name}_noise.nrrd")), name
        ours, theirs = read_sidecar(target), read_sidecar(serial)
        assert ours["parameters"] == theirs["parameters"] and ours["parameters"]["steps"] == steps
        assert ours["threads"] == theirs["threads"] == 1 and ours["bundle"] == theirs["bundle"]


def test_bad_file_is_reported_and_the_rest_finish(cohort):
    assert cohort["code"] == 1
    failed = [e for e in cohort["events"] if e["event"] == "failed"]
    assert [e["volume"] for e in failed] == ["broken.nrrd"] and "Cannot read" in failed[0]["error"]
    done = sorted(e["volume"] for e in cohort["events"] if e["event"] == "done")
    assert done == GOOD
    assert not (cohort["out"] / "broken_denoised.nrrd").exists()
    assert not sidecar_path(cohort["out"] / "broken_denoised.nrrd").exists()


def test_a_killed_worker_is_retried_and_leaves_nothing_half_written(cohort):
    killed, log = cohort["killed"], cohort["events"]
    assert killed and killed["output_then"] is False  # killed mid-run, before any output existed
    victim = [e for e in log if e.get("volume") == VICTIM]
    assert [e["attempt"] for e in victim if e["event"] == "started"] == [1, 2]
    assert [e["pid"] for e in victim if e["event"] == "started"][0] == killed["pid"]
    assert any(e["event"] == "retry" and e["attempt"] == 2 for e in victim)
    assert [e["attempts"] for e in victim if e["event"] == "done"] == [2]
    assert leftovers(cohort["out"]) == []  # the killed task's private folder was removed
    assert read_sidecar(cohort["out"] / "case3_denoised.nrrd")["parameters"]["steps"] == VICTIM_STEPS


def test_second_run_skips_everything_already_done(cohort, tiny_bundle):
    out = cohort["out"]
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*_denoised.nrrd*")}
    qc_before = {p.name: p.stat().st_mtime_ns for p in (out / "qc").iterdir()}
    log_lines = len(cohort["events"])
    code = main(["cohort", str(cohort["root"] / "in" / "cohort.csv"), str(out), "--bundle", str(tiny_bundle.path),
                 "--noise-maps", *FAST])
    assert code == 1  # the bad file is tried again, and fails again
    second = events(out / "cohort_events.jsonl")[log_lines:]
    assert sorted(e["volume"] for e in second if e["event"] == "skipped") == GOOD
    assert [e["volume"] for e in second if e["event"] == "started"] == ["broken.nrrd"]
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*_denoised.nrrd*")} == before
    assert {p.name: p.stat().st_mtime_ns for p in (out / "qc").iterdir()} == qc_before


def test_another_scan_with_the_same_name_is_refused_and_force_redoes_it_with_its_qc(ray_session, tiny_bundle,
                                                                                    tmp_path, capsys):
    # before: "skipped", exit 0, and the QC page showed a's result as b's
    from SelfSupCTDenoiseLib.cohort.qc import read_qc
    from SelfSupCTDenoiseLib.files.identity import input_identity

    for name, seed in (("a", 90), ("b", 91)):
        (tmp_path / name).mkdir()
        save_volume(tmp_path / name / "case.nrrd", seed=seed, slices=2, size=32)
    out = tmp_path / "out"
    cohort = ["cohort", "--bundle", str(tiny_bundle.path), *FAST]
    assert main([*cohort, str(tmp_path / "a"), str(out)]) == 0
    first = {p.name: p.read_bytes() for p in out.glob("case_denoised.nrrd*")}
    qc_a = read_qc(out / "case_denoised.nrrd")
    capsys.readouterr()
    assert main([*cohort, str(tmp_path / "b"), str(out)]) == 2
    err = capsys.readouterr().err
    assert "case_denoised.nrrd: case.nrrd holds other voxels" in err and "--force" in err
    assert {p.name: p.read_bytes() for p in out.glob("case_denoised.nrrd*")} == first
    assert main([*cohort, str(tmp_path / "b"), str(out), "--force"]) == 0
    assert read_sidecar(out / "case_denoised.nrrd")["input_identity"] == input_identity(tmp_path / "b" / "case.nrrd")
    qc_b = read_qc(out / "case_denoised.nrrd")  # the QC of b's output, not a's
    assert qc_b is not None and qc_b["noise_sd_input_hu"] != qc_a["noise_sd_input_hu"]


def test_qc_numbers_are_the_engines_trust_measures(cohort):
    from SelfSupCTDenoiseLib.cohort.qc import read_qc
    from SelfSupCTDenoiseLib.quality.trust import trust_report

    target = cohort["out"] / "case0_denoised.nrrd"
    qc = read_qc(target)
    source = sitk.ReadImage(str(cohort["root"] / "in" / "case0.nrrd"))
    x = sitk.GetArrayFromImage(source).astype(np.float32)
    report = trust_report(x, read_array(target).astype(np.float32), source.GetSpacing())
    assert qc["method_noise_score"] == report["method_noise"]["score"]
    assert qc["hu_shift_hu"] == report["hu_shift"]["overall"]
    sds = [r["sd"] for r in report["region_stats"] if r["image"] == "denoised"]
    assert len(sds) == 3 and qc["noise_sd_output_hu"] == pytest.approx(np.mean(sds))
    assert qc["noise_sd_output_hu"] < qc["noise_sd_input_hu"]
    run = read_sidecar(target)["run"]
    assert qc["estimated_noise_hu"] == run["estimated_noise_std_hu"]
    assert qc["guard_fell_back"] == run["guard"]["fell_back"]


@pytest.mark.skipif(shutil.which("chromium") is None,
                    reason="Chromium is not installed (.ci/run installs Debian's chromium where it can)")
def test_report_in_headless_chromium_shows_every_volume_with_its_flags(cohort, tmp_path):
    from SelfSupCTDenoiseLib.cohort.qc import flags, read_qc
    from SelfSupCTDenoiseLib.cohort.report import headless_chromium

    report = cohort["out"] / "report.html"
    assert "http" not in re.sub(r'href="qc/[^"]+"', "", report.read_text(encoding="utf-8")).lower()  # nothing from the network
    dom = headless_chromium(report)
    rows = re.findall(r'<tr[^>]*data-volume="([^"]+)" data-flags="(\d+)">(.*?)</tr>', dom, re.S)
    assert sorted(name for name, _, _ in rows) == sorted(GOOD + ["broken.nrrd"])
    counts = [int(n) for _, n, _ in rows]
    assert counts == sorted(counts, reverse=True)  # flagged rows first
    for name, count, html in rows:
        if name == "broken.nrrd":
            assert "failed: Cannot read" in html and int(count) == 1
            continue
        target = cohort["out"] / name.replace(".nrrd", "_denoised.nrrd")
        expected = flags(read_qc(target))
        shown = re.findall(r'<span class="(flag|note)">(.*?)</span>', html)
        assert [(level, text.replace("&amp;", "&")) for level, text in shown] == expected
        assert int(count) == sum(level == "flag" for level, _ in expected)
        link = re.search(r'<a href="([^"]+)"', html).group(1)
        assert (cohort["out"] / link).is_file() and 'src="data:image/png;base64,' in html
    # the page's own script sorts: by method noise, highest first
    dom = headless_chromium(report, fragment="sort=-method_noise")
    assert 'data-sorted-by="-method_noise"' in dom
    scores = [float(s) for s in re.findall(r'<td class="num" data-sort="([-0-9.e]+)">[^<]*<span class="sub">'
                                           r'(?:noise|borderline|structure|no edges|empty)</span>', dom)]
    assert len(scores) == len(GOOD) and scores == sorted(scores, reverse=True)
    shot = tmp_path / "report.png"
    headless_chromium(report, screenshot=shot)
    assert sitk.ReadImage(str(shot)).GetSize()[:2] == (1400, 900)


def test_ctrl_c_cancels_the_rest_and_keeps_finished_outputs(ray_session, tiny_bundle, tmp_path, capsys, request):
    # Ctrl+C as a terminal delivers it: a suite started in the background (`cmd &`) runs with SIGINT ignored
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    request.addfinalizer(lambda: signal.signal(signal.SIGINT, previous))
    (tmp_path / "in").mkdir()
    for i in range(4):
        save_volume(tmp_path / "in" / f"v{i}.nrrd", seed=80 + i, slices=2, size=48)
    out = tmp_path / "out"
    log = out / "cohort_events.jsonl"

    finished = threading.Event()

    def interrupt():  # Ctrl+C once the first volume is done; never after `main` returned (a later
        # test would get it): no deadline of its own, which a loaded machine overran (exit 0, all done)
        while not finished.is_set():
            if log.exists() and any(e["event"] == "done" for e in events(log)):
                os.kill(os.getpid(), signal.SIGINT)
                return
            time.sleep(0.05)

    thread = threading.Thread(target=interrupt, daemon=True)
    thread.start()
    # the first volume adapts briefly, the others long enough to be still running at the Ctrl+C
    (tmp_path / "in" / "c.csv").write_text("path,steps\nv0.nrrd,2\nv1.nrrd,400\nv2.nrrd,400\nv3.nrrd,400\n")
    try:
        code = main(["cohort", str(tmp_path / "in" / "c.csv"), str(out), "--bundle", str(tiny_bundle.path), *FAST])
    finally:
        finished.set()
        thread.join(timeout=5)
    assert code == 130 and "Cancelled" in capsys.readouterr().err
    log_events = events(log)
    done = {e["volume"] for e in log_events if e["event"] == "done"}
    cancelled = {e["volume"] for e in log_events if e["event"] == "cancelled"}
    assert "v0.nrrd" in done and cancelled and done | cancelled == {f"v{i}.nrrd" for i in range(4)}
    for name in done:
        assert read_sidecar(out / name.replace(".nrrd", "_denoised.nrrd"))["input"] == name
    for name in cancelled:
        assert not (out / name.replace(".nrrd", "_denoised.nrrd")).exists()
    assert leftovers(out) == [] and (out / "report.html").is_file()


def test_bad_names_fail_alone_a_hung_task_is_stopped_and_the_report_covers_the_folder(ray_session, tiny_bundle,
                                                                                        tmp_path, capsys):
    # before: a name too long for its outputs failed after its work (naming the task's private folder),
    # a QC image that could not be made read "no QC: the output is not complete", names reached the
    # terminal raw, the report listed this run's volumes only with the command line's settings, and a
    # read that never returns held its task (and the cohort) for ever
    import csv
    import html

    from SelfSupCTDenoiseLib.cohort.qc import qc_paths

    folder = tmp_path / "in"
    folder.mkdir()
    long_output, long_qc, red = "a" * 245 + ".nrrd", "q" * 235 + ".nrrd", "red\x1b[31m.nrrd"
    for seed, name in enumerate(["ok.nrrd", red, long_output, long_qc]):
        save_volume(folder / name, seed=70 + seed, slices=2, size=32)
    # a read that never returns, as on a hung mount: a header whose data file is a FIFO with no writer
    os.mkfifo(folder / "hung.raw")
    (folder / "hung.nhdr").write_text("NRRD0004\ntype: short\ndimension: 3\nsizes: 32 32 2\nencoding: raw\n"
                                      "endian: little\ndata file: hung.raw\n\n")
    with open(tmp_path / "c.csv", "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([["path", "steps"], ["in/ok.nrrd", "3"], [f"in/{red}", ""],
                                      [f"in/{long_output}", ""], [f"in/{long_qc}", ""], ["in/hung.nhdr", ""]])
    out = tmp_path / "out"
    out.mkdir()
    save_volume(tmp_path / "earlier.nrrd", seed=79, slices=2, size=32)  # the serial batch's, other settings
    assert main(["denoise", str(tmp_path / "earlier.nrrd"), str(out), "--bundle", str(tiny_bundle.path), *FAST,
                 "--steps", "0", "--strength", "0.5"]) == 0
    capsys.readouterr()
    code = main(["cohort", str(tmp_path / "c.csv"), str(out), "--bundle", str(tiny_bundle.path), *FAST[:-1],
                 "--task-timeout", "60"])  # well above a small volume's time, even on a loaded machine
    captured = capsys.readouterr()
    assert code == 1, captured.err
    log = {e["volume"]: e for e in events(out / "cohort_events.jsonl") if e["event"] in ("done", "failed")}
    assert {name: e["event"] for name, e in log.items()} == {
        "ok.nrrd": "done", red: "done", long_qc: "done", long_output: "failed", "hung.nhdr": "failed"}
    assert "would be 259 bytes long" in log[long_output]["error"] and log[long_output]["attempts"] == 0
    assert "still running after 60 s (--task-timeout)" in log["hung.nhdr"]["error"]
    assert log["hung.nhdr"]["elapsed_s"] >= 60
    assert "_thumb.png would be 259 bytes long" in log[long_qc]["qc_error"]
    assert leftovers(out) == [] and not any(p.name.startswith(("a" * 20, "hung")) for p in out.iterdir())
    assert read_sidecar(out / long_qc.replace(".nrrd", "_denoised.nrrd"))["input"] == long_qc
    assert not qc_paths(out / long_qc.replace(".nrrd", "_denoised.nrrd"))["json"].exists()
    # the terminal: names escaped in the progress lines and in the table
    printed = captured.out + captured.err
    assert "red\x1b" not in printed and "red\\x1b[31m.nrrd: done in" in captured.err
    assert re.search(r"^red\\x1b\[31m\.nrrd +done", captured.out, re.M)
    assert re.search(r"^q+\.nrrd +done +QC image failed: ", captured.out, re.M)
    # the report: every output of the folder, each with the settings of its sidecar
    page = (out / "report.html").read_text(encoding="utf-8")
    rows = {html.unescape(name): body for name, body in re.findall(r'<tr[^>]*data-volume="([^"]+)"[^>]*>(.*?)</tr>',
                                                                     page, re.S)}
    assert sorted(rows) == sorted(["earlier.nrrd", "ok.nrrd", red, long_output, long_qc, "hung.nhdr"])
    assert "steps 0, strength 0.5" in rows["earlier.nrrd"] and "made in this run" not in rows["earlier.nrrd"]
    assert "steps 3, strength 1.0" in rows["ok.nrrd"] and "made in this run" in rows["ok.nrrd"]
    assert "steps 5, strength 1.0" in html.unescape(rows[red]) and "made in this run" in rows[red]
    assert '<span class="flag">QC image failed: ' in rows[long_qc] and "not complete" not in page
    assert "3 made in this run" in page
