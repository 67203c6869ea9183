"""A batch a hospital's scheduler can trust (issue 27), on real files: an output counts as done only
for the input it was made from (not for another scan of the same name), the tool never writes into
its inputs, and SIGTERM / SIGINT end a batch as they end a cohort. The cohort's side of each is in
test_cohort.py (it needs the Ray of that module)."""

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import ROOT
from SelfSupCTDenoiseLib.cli import main
from SelfSupCTDenoiseLib.data.phantom import noisy_pair
from SelfSupCTDenoiseLib.files.identity import identity_difference, input_identity
from SelfSupCTDenoiseLib.files.provenance_io import read_sidecar, sidecar_path
from test_files_faults import QUICK, one_error_line, snapshot, volume


def _batch(tiny_bundle, *paths):
    return ["denoise", *map(str, paths), "--bundle", str(tiny_bundle.path), *QUICK]


def test_another_scan_with_the_same_name_is_refused_and_force_redoes_it(tiny_bundle, tmp_path, capsys):
    # before: "skipped (already complete)", exit 0: b's batch kept a's result under b's name
    for name, seed in (("a", 1), ("b", 2)):
        (tmp_path / name).mkdir()
        volume(tmp_path / name / "case.nrrd", seed=seed, dtype=np.int16)
    out = tmp_path / "out"
    out.mkdir()
    assert main(_batch(tiny_bundle, tmp_path / "a" / "case.nrrd", out)) == 0
    first = snapshot(out)
    capsys.readouterr()
    assert main(_batch(tiny_bundle, tmp_path / "b" / "case.nrrd", out)) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "case_denoised.nrrd" in line and "case.nrrd holds other voxels" in line and "--force" in line
    assert snapshot(out) == first
    assert main([*_batch(tiny_bundle, tmp_path / "b" / "case.nrrd", out), "--force"]) == 0
    recorded = read_sidecar(out / "case_denoised.nrrd")["input_identity"]
    assert recorded == input_identity(tmp_path / "b" / "case.nrrd")
    assert recorded["voxels_sha256"] != json.loads(first["case_denoised.nrrd.json"])["input_identity"]["voxels_sha256"]


def test_a_reexported_scan_is_the_same_input_and_an_old_sidecar_is_redone(tiny_bundle, tmp_path, capsys):
    source = volume(tmp_path / "case.nrrd", seed=3, dtype=np.int16)
    out = tmp_path / "out"
    out.mkdir()
    batch = _batch(tiny_bundle, source, out)
    assert main(batch) == 0
    recorded = read_sidecar(out / "case_denoised.nrrd")["input_identity"]
    # the same voxels written again, uncompressed: another size and mtime, the same scan
    sitk.WriteImage(sitk.ReadImage(str(source)), str(source), False)
    assert source.stat().st_size != recorded["size"] and identity_difference(recorded, source) is None
    capsys.readouterr()
    assert main(batch) == 0 and "skipped (already complete)" in capsys.readouterr().out
    # a sidecar without the input's identity (written before it was recorded): redone, and said so
    sidecar = sidecar_path(out / "case_denoised.nrrd")
    old = json.loads(sidecar.read_text())
    del old["input_identity"]
    sidecar.write_text(json.dumps(old))
    assert main(batch) == 0
    captured = capsys.readouterr()
    assert "skipped" not in captured.out and "case_denoised.nrrd" in captured.err and "redone" in captured.err
    assert read_sidecar(out / "case_denoised.nrrd")["input_identity"] == input_identity(source)


def test_a_sidecar_from_before_a_setting_existed_counts_as_made_without_it(tiny_bundle, tmp_path, capsys):
    """Outputs written before `views` was recorded were made with one view: a rerun at the default
    (more views) must not take them for done; with `--views 1` they are."""
    source = volume(tmp_path / "case.nrrd", seed=4, dtype=np.int16)
    out = tmp_path / "out"
    out.mkdir()
    batch = _batch(tiny_bundle, source, out)
    assert main([*batch, "--views", "1"]) == 0
    sidecar = sidecar_path(out / "case_denoised.nrrd")
    old = json.loads(sidecar.read_text())
    del old["parameters"]["views"]
    sidecar.write_text(json.dumps(old))
    first = snapshot(out)
    capsys.readouterr()
    assert main(batch) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "views 1 -> 4" in line and "--force" in line
    assert snapshot(out) == first
    assert main([*batch, "--views", "1"]) == 0 and "skipped (already complete)" in capsys.readouterr().out


def test_a_dicom_series_is_known_by_its_uids(tiny_bundle, tmp_path, capsys):
    from test_dicom_out import make_ct_series

    hu = np.round(noisy_pair(4, 32, 30.0, seed=4)[0]).astype(np.int16)
    (tmp_path / "in").mkdir()
    _, series_uid = make_ct_series(tmp_path / "in" / "ldct", hu)
    out = tmp_path / "out"
    out.mkdir()
    batch = _batch(tiny_bundle, tmp_path / "in" / "ldct", out)
    assert main(batch) == 0
    recorded = read_sidecar(out / "ldct_denoised.nrrd")["input_identity"]
    assert recorded["kind"] == "dicom series" and recorded["series_instance_uid"] == series_uid
    assert recorded["instances"] == len(hu)
    # copied again (new mtimes, same UIDs): the same series
    shutil.copytree(tmp_path / "in" / "ldct", tmp_path / "copy")
    shutil.rmtree(tmp_path / "in" / "ldct")
    shutil.copytree(tmp_path / "copy", tmp_path / "in" / "ldct")
    capsys.readouterr()
    assert main(batch) == 0 and "skipped (already complete)" in capsys.readouterr().out
    # another series (the same voxels, new UIDs) under the same folder name: refused
    shutil.rmtree(tmp_path / "in" / "ldct")
    make_ct_series(tmp_path / "in" / "ldct", hu)
    assert main(batch) == 2
    assert "ldct holds another series" in one_error_line(capsys.readouterr().err)


# --- signals: SIGTERM (what SLURM, docker and systemd send) and SIGINT end a run the same way ----

#: Adaptation steps of a few milliseconds: a volume's time is set by its steps.
SMALL_PATCHES = ["--patch-size", "32", "--batch-size", "4", "--threads", "1", "--device", "cpu", "--quiet"]


class _Run:
    """The command line in a process of its own, as a scheduler runs it (SIGINT as a terminal leaves
    it: a suite started in the background hands it down ignored); its stderr is read as it comes."""

    def __init__(self, args, tmp_path):
        env = {**os.environ, "PYTHONPATH": str(ROOT / "SelfSupCTDenoise"), "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "SelfSupCTDenoiseLib", *map(str, args)], cwd=tmp_path,
                                     env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        self.chunks = []  # as they come: progress bars end their lines with \r, not \n
        self.reader = threading.Thread(target=lambda: self.chunks.extend(iter(lambda: self.proc.stderr.read1(4096),
                                                                              b"")), daemon=True)
        self.reader.start()

    @property
    def err(self):
        return b"".join(self.chunks).decode(errors="replace")

    def signal_when(self, ready, signum, timeout=240):
        """Send `signum` once `ready()`; the exit status and stderr."""
        deadline = time.monotonic() + timeout
        while not ready() and self.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert self.proc.poll() is None and ready(), self.err
        self.proc.send_signal(signum)
        code = self.proc.wait(timeout=120)
        self.reader.join(timeout=10)
        return code, self.err


def _events(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_ends_a_batch_keeping_what_is_finished(tiny_bundle, tmp_path, signum, code):
    volume(tmp_path / "a.nrrd", seed=5, dtype=np.int16)
    volume(tmp_path / "b.nrrd", seed=6, dtype=np.int16)
    out = tmp_path / "out"
    run = _Run(["denoise", tmp_path / "a.nrrd", tmp_path / "b.nrrd", out, "--bundle", tiny_bundle.path,
                "--steps", "100", *SMALL_PATCHES[:-1]], tmp_path)  # progress shown: when b starts
    returncode, err = run.signal_when(lambda: "[2/2] b.nrrd" in run.err, signum)
    assert returncode == code, err
    line = err.strip().splitlines()[-1]  # what the run says at its end, below the progress bars
    assert "nothing was written for b.nrrd" in line and "1 earlier output(s) of this run are complete" in line
    assert sorted(p.name for p in out.iterdir()) == ["a_denoised.nrrd", "a_denoised.nrrd.json"]


def test_sigterm_ends_a_cohort_with_its_report_after_ray_installed_its_handlers(tiny_bundle, tmp_path):
    # (SIGINT after Ray's start: test_cohort.py's Ctrl+C test, in the process that started Ray)
    # before (SIGTERM): Ray's handler replaced the tool's: killed by SIGABRT (-6) in its core worker (the
    # issue saw exit 1), no report, no run_finished event, staging left
    if importlib.util.find_spec("ray") is None:
        pytest.skip("the cohort extra (ray[default]) is not installed")
    (tmp_path / "in").mkdir()
    for i in range(3):
        volume(tmp_path / "in" / f"v{i}.nrrd", seed=40 + i, dtype=np.int16)
    (tmp_path / "in" / "c.csv").write_text("path,steps\nv0.nrrd,2\nv1.nrrd,3000\nv2.nrrd,3000\n")
    out = tmp_path / "out"
    log = out / "cohort_events.jsonl"
    run = _Run(["cohort", tmp_path / "in" / "c.csv", out, "--bundle", tiny_bundle.path, "--workers", "2",
                *SMALL_PATCHES], tmp_path)
    returncode, err = run.signal_when(lambda: log.exists() and any(e["event"] == "done" for e in _events(log)),
                                      signal.SIGTERM)
    assert returncode == 143, err
    assert err.strip().splitlines()[-1].startswith("selfsupctdenoise: terminated; 1 output(s) of this run are complete")
    found = _events(log)
    assert found[-1]["event"] == "run_finished" and found[-2]["event"] == "report"
    assert found[-1]["done"] == 1 and found[-1]["cancelled"] == 2
    assert (out / "report.html").is_file() and read_sidecar(out / "v0_denoised.nrrd")["input"] == "v0.nrrd"
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith("v0_")) == [
        ".selfsupctdenoise.cohort.lock", "cohort_events.jsonl", "qc", "report.html"]  # no staging, no half output


@pytest.mark.parametrize("command", ["denoise", "cohort"])
def test_help_gives_the_exit_codes(command, capsys):
    with pytest.raises(SystemExit) as exited:
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert exited.value.code == 0
    for code in ("0 done", "1 some volumes failed", "2 bad input", "130 interrupted (Ctrl+C, SIGINT)",
                 "143 terminated (SIGTERM)"):
        assert code in text


# --- inputs are read-only: nothing the tool writes may be an input or inside a folder it reads ---

def test_a_batch_never_writes_into_an_input_folder(tiny_bundle, tmp_path, capsys):
    # before: OUTDIR = the input folder was accepted (exit 0), and a rerun denoised its own outputs
    inputs = tmp_path / "in"
    inputs.mkdir()
    volume(inputs / "case.nrrd", seed=7, dtype=np.int16)
    before = snapshot(inputs)
    for out in (inputs, inputs / "out"):
        assert main(_batch(tiny_bundle, inputs, out)) == 2
        line = one_error_line(capsys.readouterr().err)
        assert str(inputs) in line and "never writes into its inputs" in line
        assert snapshot(inputs) == before and not (inputs / "out").exists()
    # a volume named on its own: its folder is not read, writing next to it is allowed
    assert main(_batch(tiny_bundle, inputs / "case.nrrd", inputs)) == 0
    assert (inputs / "case_denoised.nrrd").is_file()


def test_a_cohort_never_writes_into_its_inputs(tiny_bundle, tmp_path, capsys):
    # before: --events pointed at an input volume appended JSON to the CT file (checksum changed, exit 0)
    study = tmp_path / "study"
    study.mkdir()
    ct = volume(study / "ct.nrrd", seed=8, dtype=np.int16)
    (tmp_path / "m.csv").write_text("path\nstudy\n")
    before = {**snapshot(study), "m.csv": (tmp_path / "m.csv").read_bytes()}
    cohort = ["cohort", "--bundle", str(tiny_bundle.path), *QUICK]
    for args, what in [([str(ct), str(tmp_path / "out"), "--events", str(ct)], "event log"),
                       ([str(study), str(tmp_path / "out"), "--events", str(study / "log.jsonl")], "event log"),
                       ([str(tmp_path / "m.csv"), str(tmp_path / "out"), "--events", str(tmp_path / "m.csv")],
                        "event log"),
                       ([str(study), str(study)], "output folder"),
                       ([str(tmp_path / "m.csv"), str(study / "sub")], "output folder")]:
        assert main([*cohort, *args]) == 2, args
        line = one_error_line(capsys.readouterr().err)
        assert line.startswith(f"selfsupctdenoise: error: The {what} ") and "never writes into its inputs" in line
    assert {**snapshot(study), "m.csv": (tmp_path / "m.csv").read_bytes()} == before
    assert not (tmp_path / "out").exists() and not (study / "sub").exists()


def test_an_unreachable_cluster_fails_within_the_connect_timeout_naming_the_address(tmp_path, capsys):
    # before: still retrying after 10 minutes, printing Ray's warnings about another address (192.0.2.2:1)
    ct = volume(tmp_path / "ct.nrrd", seed=9, dtype=np.int16)
    started = time.monotonic()
    assert main(["cohort", str(ct), str(tmp_path / "out"), "--address", "127.0.0.1:1", "--connect-timeout", "3",
                 *QUICK]) == 2
    assert time.monotonic() - started < 30
    line = one_error_line(capsys.readouterr().err)
    assert "127.0.0.1:1" in line and "--connect-timeout" in line
    assert main(["cohort", str(ct), str(tmp_path / "out"), "--address", "127.0.0.1:1", "--connect-timeout", "nan"]) == 2
    assert "--connect-timeout must be" in one_error_line(capsys.readouterr().err)


# --- manifests and values: nothing ragged, nothing non-finite ----------------------------------

def test_non_finite_numbers_are_refused_wherever_options_are_read(tmp_path, capsys):
    # before: lr=inf and gaussian_sigma_hu=nan were accepted
    from SelfSupCTDenoiseLib.cohort.inputs import read_cohort
    from SelfSupCTDenoiseLib.engine.config import AdaptConfig
    from SelfSupCTDenoiseLib.errors import InputError
    from SelfSupCTDenoiseSlicer.settings import buildConfig

    ct = volume(tmp_path / "ct.nrrd", seed=10, dtype=np.int16)
    for key, value in (("lr", float("inf")), ("gaussian_sigma_hu", float("nan")), ("strength", float("nan"))):
        with pytest.raises(InputError, match=f"{key} must be a finite number"):
            AdaptConfig.from_dict({key: value})
    for flag in (["--lr", "inf"], ["--gaussian-sigma", "nan"]):  # the command line
        assert main(["denoise", str(ct), str(tmp_path / "o.nrrd"), *flag, *QUICK]) == 2
        assert "must be a finite number" in one_error_line(capsys.readouterr().err)
    (tmp_path / "params.json").write_text('{"lr": Infinity}')  # a config file (Python's json reads it)
    assert main(["denoise", str(ct), str(tmp_path / "o.nrrd"), "--config", str(tmp_path / "params.json"), *QUICK]) == 2
    assert "lr must be a finite number" in one_error_line(capsys.readouterr().err)
    (tmp_path / "m.csv").write_text("path,lr\nct.nrrd,inf\n")  # a manifest
    with pytest.raises(InputError, match="lr must be a finite number"):
        read_cohort([tmp_path / "m.csv"], tmp_path / "out", AdaptConfig())
    with pytest.raises(InputError, match="lr must be a finite number"):  # the Slicer panel
        buildConfig(steps=5, period=5, learningRate=float("inf"), batchSize=4, seed=0, device="cpu", strength=1.0)
    for flag in ("--cpus-per-volume", "--gpus-per-volume"):
        assert main(["cohort", str(ct), str(tmp_path / "out"), flag, "nan", *QUICK]) == 2
        assert f"{flag} must be" in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "o.nrrd").exists()


@pytest.mark.parametrize("text, message", [
    ("path,steps,Steps\nct.nrrd,3,4\n", "line 1: the column steps is given twice"),
    ("path,steps\nct.nrrd,3,4\n", "line 2: 3 cells where the header has 2"),
    ("path,steps,strength\nct.nrrd,3\n", "line 2: 2 cells where the header has 3")])
def test_a_manifest_with_a_repeated_column_or_a_ragged_row_is_refused_with_its_line(tmp_path, text, message):
    # before: a repeated header silently kept the last column, and extra cells were dropped
    from SelfSupCTDenoiseLib.cohort.inputs import read_cohort
    from SelfSupCTDenoiseLib.engine.config import AdaptConfig
    from SelfSupCTDenoiseLib.errors import InputError

    volume(tmp_path / "ct.nrrd", seed=11, dtype=np.int16)
    (tmp_path / "m.csv").write_text(text)
    with pytest.raises(InputError, match=message):
        read_cohort([tmp_path / "m.csv"], tmp_path / "out", AdaptConfig())


def test_a_fifo_among_a_batchs_inputs_fails_alone_at_once_instead_of_hanging(tiny_bundle, tmp_path):
    # before: the batch waited for ever on the FIFO (it has no writer); the volumes after it never ran
    folder = tmp_path / "in"
    folder.mkdir()
    os.mkfifo(folder / "a_fifo.nrrd")
    volume(folder / "b.nrrd", seed=8, dtype=np.int16)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "SelfSupCTDenoise"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "SelfSupCTDenoiseLib", *_batch(tiny_bundle, folder, out)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr
    assert "a_fifo.nrrd: failed: Cannot read" in done.stderr and "not a regular file (a FIFO" in done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["b_denoised.nrrd", "b_denoised.nrrd.json"]
