"""Nothing wrong, nothing lost: full disks, signals while writing, reruns with other settings,
unwritable folders, mistyped parameters. Outputs appear complete (output, noise map, sidecar) or
not at all, and the previous files survive byte for byte."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import ROOT
from SelfSupCTDenoiseLib.cli import main
from SelfSupCTDenoiseLib.data.phantom import noisy_pair
from SelfSupCTDenoiseLib.engine.config import AdaptConfig
from SelfSupCTDenoiseLib.errors import InputError
from SelfSupCTDenoiseLib.files import volumes
from SelfSupCTDenoiseLib.files.provenance_io import read_sidecar, write_sidecar

QUICK = ["--steps", "0", "--quiet", "--device", "cpu"]


def volume(path, seed=0, dtype=np.float32):
    sitk.WriteImage(sitk.GetImageFromArray(noisy_pair(4, 48, 30.0, seed=seed)[0].astype(dtype)), str(path), True)
    return path


def snapshot(folder):
    """Every file under `folder` (names and bytes): what must survive a failed or cancelled run."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def one_error_line(err):
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def mount_tmpfs(folder, options):
    """A real small or read-only file system (needs root); None where mounting is not allowed."""
    if os.name != "posix" or os.geteuid() != 0 or shutil.which("mount") is None:
        return None
    folder.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
    return folder if done.returncode == 0 else None


@pytest.fixture
def small_disk(tmp_path):
    disk = mount_tmpfs(tmp_path / "disk", "size=1m")
    if disk is None:
        pytest.skip("mounting a tmpfs needs root; test_a_short_write_* covers the read-back check")
    yield disk
    subprocess.run(["umount", str(disk)], check=True)


# --- 10. full disk -----------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", [".nrrd", ".nii.gz"])  # NIfTI-gz: SimpleITK writes short, silently
def test_full_disk_keeps_the_previous_output_and_its_sidecar(tiny_bundle, tmp_path, small_disk, suffix, capsys):
    source = volume(tmp_path / "in.nrrd")
    out = small_disk / f"out{suffix}"
    assert main(["denoise", str(source), str(out), "--bundle", str(tiny_bundle.path), *QUICK]) == 0
    before = snapshot(small_disk)
    # free space just below the output's size
    free, size = shutil.disk_usage(small_disk).free, out.stat().st_size
    with open(small_disk / "filler", "wb") as stream:
        stream.write(b"\0" * (free - size + 8192))
    assert shutil.disk_usage(small_disk).free < size
    capsys.readouterr()
    code = main(["denoise", str(source), str(out), "--bundle", str(tiny_bundle.path), "--strength", "0.5", *QUICK])
    captured = capsys.readouterr()
    assert code == 2 and "wrote" not in captured.out
    line = one_error_line(captured.err)
    assert "no space left" in line.lower() and str(small_disk) in line
    (small_disk / "filler").unlink()
    assert snapshot(small_disk) == before
    assert read_sidecar(out)["parameters"]["strength"] == 1.0


def test_a_short_write_is_caught_by_reading_it_back(tiny_bundle, tmp_path, monkeypatch, capsys):
    """Portable version of the full-disk case: SimpleITK returns normally but the file is short."""
    source = volume(tmp_path / "in.nrrd")
    out = tmp_path / "out" / "den.nii.gz"
    out.parent.mkdir()
    assert main(["denoise", str(source), str(out), "--bundle", str(tiny_bundle.path), *QUICK]) == 0
    before = snapshot(out.parent)
    real_write = sitk.WriteImage

    def short_write(image, name, *args):
        real_write(image, name, *args)
        with open(name, "r+b") as stream:
            stream.truncate(os.path.getsize(name) // 2)

    monkeypatch.setattr(sitk, "WriteImage", short_write)
    capsys.readouterr()
    assert main(["denoise", str(source), str(out), "--bundle", str(tiny_bundle.path), "--strength", "0.5", *QUICK]) == 2
    assert "den.nii.gz" in one_error_line(capsys.readouterr().err)
    assert snapshot(out.parent) == before


def test_write_volume_verifies_and_replaces_header_and_data_file_together(ct_image, tmp_path):
    target = tmp_path / "ct.mhd"
    volumes.write_volume(ct_image, target)
    volumes.write_volume(sitk.Cast(ct_image, sitk.sitkFloat32) + 5.0, target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct.mhd", "ct.zraw"]
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(target))),
                                  sitk.GetArrayFromImage(ct_image).astype(np.float32) + 5)


# --- 11. signals while writing -----------------------------------------------------------------

DRIVER = r"""
import os, signal, sys, time
# as a terminal leaves it: a suite started in the background (`cmd &`) hands SIGINT down ignored
signal.signal(signal.SIGINT, signal.default_int_handler)
sys.path.insert(0, sys.argv[1])
import SimpleITK as sitk
from SelfSupCTDenoiseLib.cli import main

mode, target = os.environ["FAULT_MODE"], os.environ["FAULT_TARGET"]
if mode == "pause":  # stop once the noise map's file is on disk, before anything else happens
    real_write = sitk.WriteImage
    def write(image, name, *args):
        real_write(image, name, *args)
        if os.path.basename(name) == target:
            print("PAUSED", flush=True)
            time.sleep(120)
    sitk.WriteImage = write
else:  # SIGTERM arrives while the finished files are being renamed into place
    real_replace = os.replace
    def replace(src, dst, *args, **kwargs):
        if os.path.basename(str(dst)) == target:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_replace(src, dst, *args, **kwargs)
    os.replace = replace
sys.exit(main(sys.argv[2:]))
"""


def run_driver(tmp_path, mode, target, args, signum=None):
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    env = {**os.environ, "FAULT_MODE": mode, "FAULT_TARGET": target}
    proc = subprocess.Popen([sys.executable, str(driver), str(ROOT / "SelfSupCTDenoise"), *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if signum is not None:
        assert proc.stdout.readline().strip() == "PAUSED", proc.stderr.read()
        proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, err


@pytest.mark.parametrize("signum, code, suffix", [(signal.SIGINT, 130, ".nrrd"), (signal.SIGTERM, 143, ".mhd")])
def test_a_signal_while_writing_leaves_the_previous_files_untouched(tiny_bundle, tmp_path, signum, code, suffix):
    source = volume(tmp_path / "in.nrrd")
    folder = tmp_path / "out"
    folder.mkdir()
    out, noise = folder / f"den{suffix}", folder / f"removed{suffix}"
    args = ["denoise", str(source), str(out), "--noise-map", str(noise), "--bundle", str(tiny_bundle.path), *QUICK]
    assert main(args) == 0
    before = snapshot(folder)
    returncode, stdout, err = run_driver(tmp_path, "pause", noise.name, [*args, "--strength", "0.5"], signum)
    assert returncode == code and "wrote" not in stdout
    assert "nothing was written" in one_error_line(err)
    assert snapshot(folder) == before  # no temporary file left, the old set unchanged


def test_a_signal_during_the_final_renames_arrives_after_the_set_is_complete(tiny_bundle, tmp_path):
    source = volume(tmp_path / "in.nrrd")
    out, noise = tmp_path / "den.nrrd", tmp_path / "removed.nrrd"
    args = ["denoise", str(source), str(out), "--noise-map", str(noise), "--bundle", str(tiny_bundle.path), *QUICK]
    assert main(args) == 0
    returncode, _, err = run_driver(tmp_path, "rename", out.name, [*args, "--strength", "0.5"])
    assert returncode == 143
    assert str(out) in one_error_line(err)  # says what was written
    for path in (out, noise):
        assert sitk.ReadImage(str(path)).GetMetaData("SelfSupCTDenoise_parameters.strength") == "0.5"
    assert read_sidecar(out)["parameters"]["strength"] == 0.5
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["den.nrrd", "den.nrrd.json", "removed.nrrd", "in.nrrd", "driver.py"])


def test_leftovers_of_a_killed_run_are_removed_by_the_next_run(tiny_bundle, tmp_path):
    source = volume(tmp_path / "in.nrrd")
    old, fresh = tmp_path / f"{volumes.TEMP_PREFIX}123-old", tmp_path / f"{volumes.TEMP_PREFIX}456-new"
    for folder in (old, fresh):
        folder.mkdir()
        (folder / "den.mhd").write_text("ObjectType = Image\n")
    hour_ago = time.time() - 3600
    os.utime(old / "den.mhd", (hour_ago, hour_ago))
    os.utime(old, (hour_ago, hour_ago))
    later = time.time() + 3600  # a run that started after this one: not a leftover
    os.utime(fresh, (later, later))
    assert main(["denoise", str(source), str(tmp_path / "den.nrrd"), "--bundle", str(tiny_bundle.path), *QUICK]) == 0
    assert not old.exists() and fresh.exists()


# --- 12. batch rerun with other parameters -----------------------------------------------------

def test_a_batch_rerun_with_other_settings_is_refused_and_force_redoes_it(tiny_bundle, tmp_path, capsys):
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    for i in range(2):
        volume(inputs / f"case{i}.nrrd", seed=30 + i, dtype=np.int16)
    batch = ["denoise", str(inputs), str(out), "--bundle", str(tiny_bundle.path), *QUICK]
    assert main(batch) == 0
    first = snapshot(out)
    assert main(batch) == 0 and capsys.readouterr().out.count("skipped (already complete)") == 2

    assert main([*batch, "--strength", "0.5"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "strength 1.0 -> 0.5" in line and "--force" in line
    assert main([*batch, "--noise-maps"]) == 2
    assert "noise map" in one_error_line(capsys.readouterr().err)
    assert snapshot(out) == first

    def removed(i):
        read = lambda path: sitk.GetArrayFromImage(sitk.ReadImage(str(path))).astype(np.float64)
        return read(inputs / f"case{i}.nrrd") - read(out / f"case{i}_denoised.nrrd")

    full = [removed(i) for i in range(2)]
    assert main([*batch, "--strength", "0.5", "--force"]) == 0
    for i in range(2):
        assert read_sidecar(out / f"case{i}_denoised.nrrd")["parameters"]["strength"] == 0.5
        assert np.abs(removed(i) - 0.5 * full[i]).max() <= 1.0  # half the noise removed (int16 rounding)
        assert full[i].std() > 5
    capsys.readouterr()
    assert main([*batch, "--strength", "0.5"]) == 0
    assert capsys.readouterr().out.count("skipped (already complete)") == 2


def test_a_dicom_batch_redone_with_force_replaces_the_series_folder(tiny_bundle, tmp_path, capsys):
    import pydicom

    from test_dicom_out import make_ct_series

    (tmp_path / "in").mkdir()
    make_ct_series(tmp_path / "in" / "ldct", np.round(noisy_pair(4, 32, 30.0, seed=4)[0]).astype(np.int16))
    out = tmp_path / "out"
    batch = ["denoise", str(tmp_path / "in"), str(out), "--dicom-out", "--bundle", str(tiny_bundle.path), *QUICK]
    assert main(batch) == 0
    series = out / "ldct_denoised"
    first_uid = pydicom.dcmread(next(series.iterdir())).SeriesInstanceUID
    assert main([*batch, "--strength", "0.5"]) == 2
    assert main([*batch, "--strength", "0.5", "--force"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["ldct_denoised", "ldct_denoised.json"]  # no leftovers
    assert pydicom.dcmread(next(series.iterdir())).SeriesInstanceUID != first_uid
    assert read_sidecar(series)["parameters"]["strength"] == 0.5


# --- 13. one-line errors, before any work ------------------------------------------------------

def test_an_unwritable_output_folder_is_refused_before_loading(tiny_bundle, tmp_path, monkeypatch, capsys):
    source = volume(tmp_path / "in.nrrd")
    locked = mount_tmpfs(tmp_path / "ro", "ro,size=64k")  # read-only even for root
    if locked is None:
        if os.name == "posix" and os.geteuid() == 0:
            pytest.skip("root ignores file modes and cannot mount a read-only tmpfs here")
        locked = tmp_path / "ro"
        locked.mkdir()
        locked.chmod(0o555)

    def never(*args, **kwargs):
        raise AssertionError("the input was loaded before the output folder was checked")

    monkeypatch.setattr("SelfSupCTDenoiseLib.files.denoise_file.read_volume", never)
    try:
        for paths in ([source, locked / "den.nrrd"], [tmp_path, locked], [source, source, locked / "batch"]):
            code = main(["denoise", *map(str, paths), "--bundle", str(tiny_bundle.path), *QUICK])
            assert code == 2
            assert str(locked) in one_error_line(capsys.readouterr().err)
        assert os.listdir(locked) == []
    finally:
        if locked.is_mount():
            subprocess.run(["umount", str(locked)], check=True)


@pytest.mark.parametrize("key, value, expected", [("steps", "5", "an integer"), ("lr", "1e-4", "a number"),
                                                 ("guard", "no", "true or false"), ("strength", True, "a number"),
                                                 ("pseudo_noise", 3, "a string")])
def test_parameters_of_the_wrong_type_name_the_key_and_the_type(key, value, expected):
    with pytest.raises(InputError) as error:
        AdaptConfig.from_dict({key: value})
    assert f"{key} must be {expected}" in str(error.value)


def test_a_config_file_with_a_string_number_is_one_error_line(tmp_path, capsys):
    (tmp_path / "params.json").write_text(json.dumps({"steps": "5"}))
    source = volume(tmp_path / "in.nrrd")
    assert main(["denoise", str(source), str(tmp_path / "o.nrrd"), "--config", str(tmp_path / "params.json")]) == 2
    assert "steps must be an integer" in one_error_line(capsys.readouterr().err)
    assert AdaptConfig.from_dict({"steps": 5, "lr": 1, "strength": 0.5}).lr == 1  # ints are numbers


def test_an_empty_input_folder_says_so(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["denoise", str(tmp_path / "empty"), str(tmp_path / "out"), *QUICK]) == 2
    assert f"no volumes found in {tmp_path / 'empty'}" in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "out").exists()


# --- 14. sidecar permissions; a volume name as batch output -------------------------------------

@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_sidecars_follow_the_umask_like_other_outputs(tmp_path, mask):
    previous = os.umask(mask)
    try:
        path = write_sidecar(tmp_path / "den.nrrd", {"format": "x"})
    finally:
        os.umask(previous)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask


def test_a_folder_input_with_a_volume_file_name_as_output_is_refused(tmp_path, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    volume(inputs / "case.nrrd")
    assert main(["denoise", str(inputs), str(tmp_path / "result.nrrd"), *QUICK]) == 2
    assert "result.nrrd" in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "result.nrrd").exists()
