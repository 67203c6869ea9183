"""A batch a hospital's scheduler can trust (issue 27), on real files: an output counts as done only
for the input it was made from (not for another scan of the same name), the tool never writes into
its inputs, and SIGTERM / SIGINT end a batch as they end a cohort. The cohort's side of each is in
test_cohort.py (it needs the Ray of that module)."""

import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

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
