"""Projection-domain low-dose simulation (astra-toolbox, CPU) on tiny water phantoms, and the
dataset builder on a local phantom file."""

import json

import numpy as np
import pytest

astra = pytest.importorskip("astra")

from SelfSupCTDenoiseLib.data import lowdose  # noqa: E402
from SelfSupCTDenoiseLib.quality.nps import lag1_autocorrelation  # noqa: E402


def water_phantom(size=96, spacing=2.0, radius_mm=80.0, slices=2):
    """(slices, size, size) HU: a water cylinder (0 HU) with a bone insert (700 HU) in air."""
    yy, xx = (np.mgrid[:size, :size] - size / 2 + 0.5) * spacing
    image = np.where(xx ** 2 + yy ** 2 < radius_mm ** 2, 0.0, -1000.0)
    image[(xx - 30) ** 2 + (yy + 20) ** 2 < 12 ** 2] = 700.0
    return np.repeat(image[None], slices, axis=0).astype(np.float32)


def inner_mask(size=96, spacing=2.0, radius_mm=50.0):
    yy, xx = (np.mgrid[:size, :size] - size / 2 + 0.5) * spacing
    return (xx ** 2 + yy ** 2 < radius_mm ** 2) & ~((xx - 30) ** 2 + (yy + 20) ** 2 < 20 ** 2)


def inserted(dose, seed=0, filter_type="hann", size=96, spacing=2.0, slices=2):
    ndct = water_phantom(size, spacing, slices=slices)
    ldct = lowdose.simulate_low_dose(ndct, (spacing, spacing, 3.0), dose, filter_type, seed=seed)
    return ldct - ndct


@pytest.mark.parametrize("shape", [(45, 61), (3, 40, 33)])
def test_shape_and_dtype_preserved(shape):
    ndct = np.zeros(shape, np.int16)
    ldct = lowdose.simulate_low_dose(ndct, (1.5, 1.5, 2.0), 0.25)
    assert ldct.shape == ndct.shape and ldct.dtype == np.float32
    assert np.isfinite(ldct).all()


def test_reproducible_with_seed_and_different_with_another():
    a, b, c = inserted(0.25, seed=3), inserted(0.25, seed=3), inserted(0.25, seed=4)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_noise_is_correlated_and_mean_hu_preserved():
    noise = inserted(0.25, slices=4)
    mask = np.broadcast_to(inner_mask(), noise.shape)
    assert 5.0 < noise[mask].std() < 80.0
    assert abs(noise[mask].mean()) < 0.15 * noise[mask].std()       # no HU shift, only noise
    assert lag1_autocorrelation(noise, mask) > 0.3                   # FBP noise is not white


def test_noise_grows_as_dose_falls():
    mask = np.broadcast_to(inner_mask(), (4, 96, 96))
    std = {d: inserted(d, slices=4)[mask].std() for d in (0.5, 0.25, 0.125)}
    assert std[0.5] < std[0.25] < std[0.125]
    # inserted variance ~ (1 - dose) / dose, so that NDCT + inserted noise ~ 1 / dose (Yu et al.)
    assert std[0.25] / std[0.5] == pytest.approx(np.sqrt(3.0), rel=0.15)
    assert std[0.125] / std[0.5] == pytest.approx(np.sqrt(7.0), rel=0.15)


def test_sharp_filter_gives_more_and_whiter_noise():
    mask = np.broadcast_to(inner_mask(), (2, 96, 96))
    hann, ramlak = inserted(0.25), inserted(0.25, filter_type="ram-lak")
    assert ramlak[mask].std() > 1.5 * hann[mask].std()
    assert lag1_autocorrelation(ramlak, mask) < lag1_autocorrelation(hann, mask)


def test_noise_level_is_about_grid_independent():
    """The same object on a 2x coarser grid gets about the same noise in HU at the same dose."""
    fine = inserted(0.25, size=128, spacing=1.5, slices=2)
    coarse = inserted(0.25, size=64, spacing=3.0, slices=4)
    ratio = coarse[np.broadcast_to(inner_mask(64, 3.0), coarse.shape)].std() / \
        fine[np.broadcast_to(inner_mask(128, 1.5), fine.shape)].std()
    assert ratio == pytest.approx(1.0, abs=0.25)


def test_more_attenuation_gives_more_noise():
    small = lowdose.simulate_low_dose(water_phantom(radius_mm=40.0), (2.0, 2.0), 0.25) - water_phantom(radius_mm=40.0)
    large = inserted(0.25)
    mask = np.broadcast_to(inner_mask(radius_mm=30.0), small.shape)
    assert large[mask].std() > 1.3 * small[mask].std()


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError):
        lowdose.simulate_low_dose(np.zeros((32, 32)), (1.0, 1.0), dose=1.0)
    with pytest.raises(ValueError):
        lowdose.simulate_low_dose(np.zeros((32, 32)), (1.0, 1.0), filter_type="gauss")
    with pytest.raises(ValueError):
        lowdose.simulate_low_dose(np.zeros((2, 2, 32, 32)), (1.0, 1.0))


def test_dose_tags_and_insertion_i0():
    spec = lowdose.DoseSpec(0.25, "ram-lak")
    assert spec.tag == "d25_ramlak"
    assert lowdose.DoseSpec.from_tag("d12_hann") == lowdose.DoseSpec(0.12, "hann")
    assert lowdose.DoseSpec.from_tag(spec.tag) == spec
    with pytest.raises(ValueError):
        lowdose.DoseSpec.from_tag("quarter")
    assert lowdose.insertion_i0(0.5, 1e5) == pytest.approx(1e5)
    assert lowdose.insertion_i0(0.25, 3e5) == pytest.approx(1e5)


@pytest.mark.parametrize("dose_reference", ["ndct", "fixed"])
def test_build_dataset_on_a_local_file(tmp_path, dose_reference):
    """The builder end to end on a local noisy phantom: files, geometry, manifest, dose calibration."""
    import SimpleITK as sitk

    from SelfSupCTDenoiseLib.data import dataset, sources

    pytest.importorskip("bm3d")
    phantom = water_phantom(size=64, spacing=3.0, slices=3)
    phantom += np.random.default_rng(0).normal(0.0, 5.0, phantom.shape)   # the NDCT's own noise
    image = sitk.GetImageFromArray(phantom.astype(np.int16))
    image.SetSpacing((3.0, 3.0, 5.0))
    image.SetOrigin((-96.0, -90.0, 12.5))
    source = tmp_path / "phantom.nrrd"
    sitk.WriteImage(image, str(source))
    subjects = (sources.Subject("phantom", "volume", "water phantom", "test", path=str(source)),)
    opts = dataset.BuildOptions(out_dir=tmp_path / "sim", tags=("d25_hann", "d50_hann"), max_slices=2,
                                subjects=subjects, seed=1, dose_reference=dose_reference)
    manifest = dataset.build_dataset(opts, log=lambda _: None)
    folder = tmp_path / "sim" / "phantom"
    for name in ("ndct", "ldct_d25_hann", "ldct_d50_hann", "clean", "clean_ldct_d25_hann"):
        out = sitk.ReadImage(str(folder / f"{name}.nrrd"))
        assert out.GetSize() == (64, 64, 2) and out.GetSpacing() == (3.0, 3.0, 5.0)
        assert out.GetOrigin() == (-96.0, -90.0, 12.5) and out.GetPixelID() == sitk.sitkInt16
    entry = json.loads((tmp_path / "sim" / "manifest.json").read_text(encoding="utf-8"))["subjects"][0]
    assert entry == manifest["subjects"][0]
    assert manifest["splits"] == {"train": [], "validation": [], "test": ["phantom"]}
    tags = entry["tags"]
    assert tags["d25_hann"]["noise_std_hu"] > tags["d50_hann"]["noise_std_hu"] > 0
    assert entry["ndct_noise_sd_hu"] == pytest.approx(5.0, rel=0.25)
    if dose_reference == "ndct":   # quarter dose inserts sqrt(3) x the NDCT's own noise
        assert tags["d25_hann"]["noise_std_hu"] == pytest.approx(np.sqrt(3) * entry["ndct_noise_sd_hu"], rel=0.2)
    else:
        assert entry["i0_full"] == pytest.approx(lowdose.DEFAULT_I0_FULL)
    assert "phantom" in dataset.summary_table(manifest)
