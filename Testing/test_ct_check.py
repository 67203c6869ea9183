"""The CT-in-HU check: what CT has (air near -1000 HU, a soft-tissue peak), on real files."""

import numpy as np
import pytest
import SimpleITK as sitk

from SelfSupCTDenoiseLib.cli import main
from SelfSupCTDenoiseLib.data.dataset import sample_paths
from SelfSupCTDenoiseLib.data.phantom import clean_phantom, correlated_noise
from SelfSupCTDenoiseLib.errors import InputError
from SelfSupCTDenoiseLib.files.provenance_io import from_nrrd_fields, read_sidecar
from SelfSupCTDenoiseLib.files.volumes import read_volume


def fov(size, radius):
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    return xx ** 2 + yy ** 2 <= radius ** 2


def ct_hu(size=64, seed=0):
    """A noisy CT phantom (HU) with air up to the edge of a circular field of view."""
    volume = clean_phantom(4, size, seed=seed)
    return volume + correlated_noise(volume.shape, 25.0, seed=seed + 1)


def write(tmp_path, array, name="in.nrrd"):
    path = tmp_path / name
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path), True)
    return path


def stored_values(dtype):
    """What a reader that skips the DICOM rescale gives: HU + 1024, zeros outside the field of view."""
    stored = np.clip(np.round(ct_hu() + 1024), 0, None)
    stored[:, ~fov(64, 30)] = 0
    return stored.astype(dtype)


def mr_like():
    """Magnitude MR, background masked to zero (as many exports are), tissue classes up to ~1500."""
    rng = np.random.default_rng(3)
    head = fov(64, 26)
    volume = np.where(head, 650.0, 0.0)[None].repeat(4, 0)  # grey matter
    volume[:, fov(64, 18)] += 200  # white matter
    volume[:, head & ~fov(64, 23)] = 1450  # scalp fat, bright on T1
    return (volume + head * np.abs(rng.normal(0, 15, (4, 64, 64)))).astype(np.float32)


@pytest.mark.parametrize("dtype", [np.int16, np.uint16])
def test_raw_stored_values_are_refused_with_the_rescale_hint(tmp_path, dtype):
    path = write(tmp_path, stored_values(dtype))
    with pytest.raises(InputError, match=r"stored values, HU \+ 1024.*Apply the rescale slope/intercept"):
        read_volume(path)


def test_mr_like_volume_is_refused_as_not_ct(tmp_path):
    with pytest.raises(InputError, match="CT only") as info:
        read_volume(write(tmp_path, mr_like()))
    assert "HU + 1024" not in str(info.value)  # no rescale hint for what is not shifted CT


def test_cli_refuses_stored_values_in_one_line_and_writes_nothing(tmp_path, capsys):
    source = write(tmp_path, stored_values(np.uint16))
    before = source.read_bytes()
    out = tmp_path / "out.nrrd"
    assert main(["denoise", str(source), str(out), "--steps", "0", "--quiet", "--device", "cpu"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "rescale slope/intercept" in err[0]
    assert not out.exists() and source.read_bytes() == before


def tight_crop():
    """A field of view cropped to the body (the spine_zoom case): little air, lung only at the edge."""
    return np.round(ct_hu(96)[:, 14:82, 8:88]).astype(np.int16)


def padded(value):
    volume = np.round(ct_hu(64)).astype(np.int16)
    volume[:, ~fov(64, 29)] = value
    return volume


@pytest.mark.parametrize("make", [
    lambda: np.round(ct_hu()).astype(np.int16),
    lambda: ct_hu().astype(np.float32),
    lambda: ct_hu().astype(np.float64),
    tight_crop,
    lambda: padded(-3024),
    lambda: padded(-2048),
    lambda: padded(-32768),
], ids=["int16", "float32", "float64", "tight-crop", "pad-3024", "pad-2048", "pad-32768"])
def test_ct_volumes_are_accepted(tmp_path, make):
    array = make()
    image = read_volume(write(tmp_path, array))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), array)


def test_the_shipped_sample_is_accepted():
    for path in sample_paths().values():
        assert read_volume(path).GetSize()[2] > 1


def normalised():
    """CT scaled to 0..1 (as some pipelines export it): not HU, whatever its shape."""
    return ((np.clip(ct_hu(), -1024, 3071) + 1024) / 4095).astype(np.float32)


def test_normalised_ct_is_refused_as_not_hu(tmp_path):
    with pytest.raises(InputError, match="below -50 HU.*CT only"):
        read_volume(write(tmp_path, normalised()))


@pytest.mark.parametrize("make", [mr_like, lambda: stored_values(np.uint16)], ids=["mr", "stored-values"])
def test_the_check_turned_off_reads_the_volume_unchanged(tmp_path, make):
    array = make()
    image = read_volume(write(tmp_path, array), ct_check=False)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), array)


OFF = ["--steps", "0", "--quiet", "--device", "cpu", "--threads", "1"]


def test_cli_denoises_with_the_check_off_and_the_provenance_says_what_it_overrode(tmp_path, tiny_bundle, capsys):
    source = write(tmp_path, mr_like())
    out = tmp_path / "out.nrrd"
    bundle = ["--bundle", str(tiny_bundle.path)]
    assert main(["denoise", str(source), str(out), *bundle, *OFF]) == 2
    assert "CT only" in capsys.readouterr().err and not out.exists()
    assert main(["denoise", str(source), str(out), *bundle, *OFF, "--no-ct-check"]) == 0
    assert "CT check overridden" in capsys.readouterr().out
    record = read_sidecar(out)
    assert record["parameters"]["ct_check"] is False
    assert "does not look like CT in Hounsfield units" in record["run"]["ct_check"]["overridden"]
    # the NRRD header carries the same record
    header = sitk.ReadImage(str(out))
    fields = from_nrrd_fields({key: header.GetMetaData(key) for key in header.GetMetaDataKeys()})
    assert fields["run"]["ct_check"] == record["run"]["ct_check"]


def test_the_check_on_or_off_over_ct_is_recorded_as_nothing_overridden(tmp_path, tiny_bundle):
    source = write(tmp_path, np.round(ct_hu()).astype(np.int16))
    bundle = ["--bundle", str(tiny_bundle.path)]
    for flags, enabled in (([], True), (["--no-ct-check"], False)):
        out = tmp_path / f"out{enabled}.nrrd"
        assert main(["denoise", str(source), str(out), *bundle, *OFF, *flags]) == 0
        assert read_sidecar(out)["run"]["ct_check"] == {"enabled": enabled, "overridden": None}


def test_batch_with_the_check_off_and_a_rerun_without_it_skips_what_is_done(tmp_path, tiny_bundle, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("a.nrrd", "b.nrrd"):
        write(inputs, mr_like(), name)
    out = tmp_path / "out"
    bundle = ["--bundle", str(tiny_bundle.path)]
    assert main(["denoise", str(inputs), str(out), *bundle, *OFF]) == 1  # both refused
    assert "0 done, 2 failed" in capsys.readouterr().out
    assert main(["denoise", str(inputs), str(out), *bundle, *OFF, "--no-ct-check"]) == 0
    assert all(read_sidecar(out / f"{n}_denoised.nrrd")["parameters"]["ct_check"] is False for n in "ab")
    capsys.readouterr()
    assert main(["denoise", str(inputs), str(out), *bundle, *OFF, "--no-ct-check"]) == 0  # the check changes no output
    assert capsys.readouterr().out.count("skipped (already complete)") == 2


def test_a_cohort_manifest_turns_the_check_off_for_one_volume(tmp_path, tiny_bundle):
    from SelfSupCTDenoiseLib.cohort import task
    from SelfSupCTDenoiseLib.cohort.inputs import read_cohort
    from SelfSupCTDenoiseLib.engine.config import AdaptConfig

    write(tmp_path, mr_like(), "mr.nrrd")
    write(tmp_path, mr_like(), "mr2.nrrd")
    (tmp_path / "cohort.csv").write_text("path,ct-check\nmr.nrrd,false\nmr2.nrrd,\n")
    out = tmp_path / "out"
    out.mkdir()
    volumes = read_cohort([tmp_path / "cohort.csv"], out, AdaptConfig(steps=0, threads=1, device="cpu"))
    assert [v.config.ct_check for v in volumes] == [False, True]
    specs = [task.volume_spec(v, "run1", tiny_bundle.path, None, dicom_out=False, force=False, denoise=True)
             for v in volumes]
    assert task.process_volume(specs[0])["status"] == "done"
    assert read_sidecar(out / "mr_denoised.nrrd")["run"]["ct_check"]["overridden"]
    refused = task.process_volume(specs[1])
    assert refused["status"] == "failed" and "CT only" in refused["error"]
    assert not (out / "mr2_denoised.nrrd").exists()
