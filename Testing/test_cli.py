"""The command line end to end: pretrain on synthetic pairs, denoise an NRRD, evaluate, batch."""

import json
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import ROOT
from SelfSupCTDenoiseLib.cli import main
from SelfSupCTDenoiseLib.data.phantom import noisy_pair
from SelfSupCTDenoiseLib.engine.noise_level import soft_tissue_std
from SelfSupCTDenoiseLib.files.provenance_io import read_sidecar

FAST = ["--steps", "10", "--period", "5", "--batch-size", "4", "--patch-size", "32", "--quiet"]


def save(array, path, like=None):
    image = sitk.GetImageFromArray(array)
    if like is not None:
        image.CopyInformation(like)
    sitk.WriteImage(image, str(path), True)
    return path


@pytest.fixture(scope="module")
def cli_bundle(tmp_path_factory):
    """A bundle made by `selfsupctdenoise pretrain` on the tests' synthetic pairs."""
    folder = tmp_path_factory.mktemp("cli")
    args = ["pretrain", "--out", str(folder / "bundle"), "--profile", "tiny", "--denoiser-steps", "40",
            "--noise-model-steps", "20", "--batch-size", "4", "--patch-size", "32", "--quiet"]
    for i in range(2):
        ldct, ndct = noisy_pair(4, 48, 30.0, seed=i)
        args += ["--pair", str(save(ldct, folder / f"l{i}.nrrd")), str(save(ndct, folder / f"n{i}.nrrd"))]
    assert main(args) == 0
    return folder / "bundle"


def test_denoise_writes_outputs_with_the_input_geometry_and_provenance(cli_bundle, ct_image, tmp_path, capsys):
    source = tmp_path / "in.nrrd"
    sitk.WriteImage(ct_image, str(source))
    before = source.read_bytes()
    out, noise = tmp_path / "out.nrrd", tmp_path / "noise.nrrd"
    assert main(["denoise", str(source), str(out), "--noise-map", str(noise), "--bundle", str(cli_bundle),
                 "--strength", "high", *FAST]) == 0
    assert source.read_bytes() == before
    for path in (out, noise):
        image = sitk.ReadImage(str(path))
        assert image.GetSize() == ct_image.GetSize()
        assert image.GetOrigin() == ct_image.GetOrigin()
        assert image.GetSpacing() == ct_image.GetSpacing()
        assert image.GetDirection() == ct_image.GetDirection()
    result, removed = sitk.ReadImage(str(out)), sitk.ReadImage(str(noise))
    assert result.GetPixelID() == ct_image.GetPixelID()  # int16 in, int16 out
    np.testing.assert_allclose(sitk.GetArrayFromImage(removed),
                               sitk.GetArrayFromImage(ct_image) - sitk.GetArrayFromImage(result).astype(np.float32))
    assert result.GetMetaData("SelfSupCTDenoise_parameters.steps") == "10"
    assert len(result.GetMetaData("SelfSupCTDenoise_bundle.sha256")) == 64
    sidecar = read_sidecar(out)
    assert sidecar["parameters"]["seed"] == 0 and sidecar["versions"]["torch"]
    printed = capsys.readouterr().out
    assert "wrote" in printed and "input noise ~" in printed and "HU in soft tissue" in printed


def test_errors_are_one_clear_line_and_write_nothing(cli_bundle, tmp_path, capsys):
    flat = save(np.zeros((64, 64), np.int16), tmp_path / "slice.nrrd")
    assert main(["denoise", str(flat), str(tmp_path / "o.nrrd"), "--bundle", str(cli_bundle), *FAST]) == 2
    err = capsys.readouterr().err
    assert "error: " in err and "2D image" in err and "Traceback" not in err
    assert not (tmp_path / "o.nrrd").exists()
    assert main(["denoise", str(flat), str(flat), *FAST]) == 2
    assert "is the input" in capsys.readouterr().err


def test_a_config_file_gives_defaults_and_flags_win(cli_bundle, ct_image, tmp_path):
    from SelfSupCTDenoiseLib.cli import build_parser
    from SelfSupCTDenoiseLib.commands.options import config_from_args

    (tmp_path / "p.json").write_text(json.dumps({"steps": 7, "seed": 3}))
    args = build_parser().parse_args(["denoise", "a.nrrd", "b.nrrd", "--config", str(tmp_path / "p.json"), "--seed", "5"])
    config = config_from_args(args)
    assert (config.steps, config.seed) == (7, 5)


def test_batch_continues_past_a_bad_file_and_resumes(cli_bundle, tmp_path, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i in range(2):
        save(noisy_pair(3, 48, 30.0, seed=20 + i)[0], inputs / f"case{i}.nrrd")
    (inputs / "broken.nrrd").write_text("garbage")
    out = tmp_path / "out"
    code = main(["denoise", str(inputs), str(out), "--bundle", str(cli_bundle), "--noise-maps", *FAST])
    assert code == 1
    text = capsys.readouterr().out
    assert "2 done, 1 failed" in text and "FAILED" in text
    assert sorted(p.name for p in out.glob("*.nrrd")) == ["case0_denoised.nrrd", "case0_noise_map.nrrd",
                                                         "case1_denoised.nrrd", "case1_noise_map.nrrd"]
    (inputs / "broken.nrrd").unlink()
    assert main(["denoise", str(inputs), str(out), "--bundle", str(cli_bundle), *FAST]) == 0
    assert text.count("skipped") == 0 and capsys.readouterr().out.count("skipped (already complete)") == 2


def test_evaluate_reports_both_windows_as_table_and_json(tmp_path, capsys):
    ldct, ndct = noisy_pair(3, 48, 30.0, seed=3)
    ref, noisy = save(ndct, tmp_path / "ref.nrrd"), save(ldct, tmp_path / "noisy.nrrd")
    assert main(["evaluate", str(noisy), "--reference", str(ref), "--json", str(tmp_path / "r.json")]) == 0
    row = json.loads((tmp_path / "r.json").read_text(encoding="utf-8"))[0]
    assert 20 < row["psnr_soft"] < 30 and row["psnr_full"] > row["psnr_soft"] + 15
    assert 0 < row["ssim_soft"] < 1 and row["rmse_hu"] == pytest.approx(30.0, rel=0.1)
    assert "PSNR soft" in capsys.readouterr().out


def test_console_script_module_entry_and_help():
    result = subprocess.run([sys.executable, "-m", "SelfSupCTDenoiseLib", "--help"], capture_output=True, text=True,
                            cwd=ROOT / "SelfSupCTDenoise")
    assert result.returncode == 0
    for command in ("denoise", "evaluate", "pretrain"):
        assert command in result.stdout
    assert "worker" not in result.stdout.split("positional arguments")[-1].split("options")[0].replace("{", "")


def test_dicom_series_in_dicom_series_out(cli_bundle, tmp_path):
    import pydicom

    from test_dicom_out import make_ct_series, read_series

    hu = np.round(noisy_pair(4, 32, 30.0, seed=4)[0]).astype(np.int16)
    study, series = make_ct_series(tmp_path / "ldct", hu)
    out, noise = tmp_path / "denoised", tmp_path / "noise"
    assert main(["denoise", str(tmp_path / "ldct"), str(out), "--noise-map", str(noise), "--dicom-out",
                 "--bundle", str(cli_bundle), *FAST]) == 0
    source, result = read_series(tmp_path / "ldct"), read_series(out)
    assert result.GetSize() == source.GetSize() and result.GetOrigin() == pytest.approx(source.GetOrigin())
    first = pydicom.dcmread(next(out.iterdir()))
    assert first.StudyInstanceUID == study and first.SeriesInstanceUID != series
    assert "DERIVED" in first.ImageType and first.SeriesDescription.endswith("denoised (research)")
    removed = sitk.GetArrayFromImage(read_series(noise))
    np.testing.assert_allclose(removed, sitk.GetArrayFromImage(source) - sitk.GetArrayFromImage(result), atol=0.5)


def test_measure_reports_region_noise_equal_to_numpy_and_the_trust_numbers(tmp_path):
    ldct, ndct = noisy_pair(8, 160, 30.0, seed=8)  # big enough for the mean removed noise to average out
    source, result = save(ldct, tmp_path / "in.nrrd"), save(ndct, tmp_path / "out.nrrd")
    assert main(["measure", str(source), str(result), "--region", "1:5,70:90,60:100", "--json",
                 str(tmp_path / "m.json")]) == 0
    report = json.loads((tmp_path / "m.json").read_text(encoding="utf-8"))
    rows = {row["image"]: row for row in report["region_stats"]}
    np.testing.assert_allclose(rows["input"]["sd"], ldct[1:5, 70:90, 60:100].std(ddof=1), rtol=1e-5)
    np.testing.assert_allclose(rows["noise map"]["mean"], (ldct - ndct)[1:5, 70:90, 60:100].mean(), atol=1e-4)
    assert abs(report["hu_shift"]["overall"]) < 2.0  # removing exactly the noise shifts no tissue value
    assert report["method_noise"]["score"] < 0.15


def test_measure_alone_reports_the_input_noise_estimate(tmp_path, capsys, tiny_bundle):
    ldct, ndct = noisy_pair(8, 160, 30.0, seed=9)
    source = save(ldct, tmp_path / "in.nrrd")
    # the tiny bundle was trained on this phantom noise: its texture anchors the estimate
    assert main(["measure", str(source), "--bundle", str(tiny_bundle.path), "--json", str(tmp_path / "m.json")]) == 0
    estimate = json.loads((tmp_path / "m.json").read_text(encoding="utf-8"))["input_noise_estimate"]
    true_std = soft_tissue_std(ldct, ldct - ndct)
    assert abs(estimate["std_hu"] - true_std) < 0.2 * true_std
    assert f"input noise ~{estimate['std_hu']:.0f} HU" in capsys.readouterr().out
    assert main(["measure", str(source), "--region", "1:5,70:90,60:100"]) == 2  # a region needs the output


def test_noise_models_from_without_recalibrate_is_refused_before_any_training(tiny_bundle, tmp_path, capsys):
    ldct, ndct = noisy_pair(2, 32, 30.0, seed=1)
    for name, array in (("ldct", ldct), ("ndct", ndct)):
        sitk.WriteImage(sitk.GetImageFromArray(array), str(tmp_path / f"{name}.nrrd"))
    code = main(["pretrain", "--out", str(tmp_path / "b"), "--pair", str(tmp_path / "ldct.nrrd"),
                 str(tmp_path / "ndct.nrrd"), "--profile", "tiny", "--denoiser-steps", "2", "--noise-model-steps", "2",
                 "--patch-size", "32", "--batch-size", "2", "--noise-models-from", str(tiny_bundle.path), "--quiet"])
    assert code == 2 and "--noise-models-from" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()
