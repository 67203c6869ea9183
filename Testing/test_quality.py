"""Trust checks: strength, regions, uniform-region finder, HU shift, method noise, dtype (all seconds)."""

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from SelfSupCTDenoiseLib.data.phantom import correlated_noise
from SelfSupCTDenoiseLib.engine.strength import STRENGTH_LEVELS, cast_like_input, resolve_strength, strength_blend
from SelfSupCTDenoiseLib.errors import InputError, SelfSupCTDenoiseError
from SelfSupCTDenoiseLib.quality.hu_shift import hu_shift
from SelfSupCTDenoiseLib.quality.method_noise import method_noise_score
from SelfSupCTDenoiseLib.quality.regions import (Box, box_around, box_from_mm, compare_regions,
                                                 find_uniform_regions, parse_box, region_stats,
                                                 uniform_tissue_mask)


def detail_phantom(slices=6, size=128):
    """Body with a flat disc, 2 px and 1 px line pairs, small dots and a bone ring (identical slices)."""
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    image = np.full((size, size), -1000.0, np.float32)
    image[((xx - size / 2) / (0.45 * size)) ** 2 + ((yy - size / 2) / (0.38 * size)) ** 2 <= 1] = 40.0
    image[(xx - 0.35 * size) ** 2 + (yy - 0.5 * size) ** 2 <= (0.12 * size) ** 2] = 60.0
    bars = (xx >= 0.55 * size) & (xx < 0.75 * size)
    image[bars & (yy >= 0.3 * size) & (yy < 0.45 * size) & (xx.astype(int) // 2 % 2 == 0)] += 100.0
    image[bars & (yy >= 0.55 * size) & (yy < 0.65 * size) & (xx.astype(int) % 2 == 0)] += 150.0
    for k in range(5):
        image[(xx - (0.3 + 0.08 * k) * size) ** 2 + (yy - 0.75 * size) ** 2 <= (1 + 0.5 * k) ** 2] = 300.0
    ring = np.hypot(xx - 0.5 * size, yy - 0.2 * size)
    image[(ring >= 4) & (ring <= 7)] = 700.0
    return np.repeat(image[None], slices, axis=0)


@pytest.fixture(scope="module")
def noisy_detail():
    clean = detail_phantom()
    noise = correlated_noise(clean.shape, 25.0, seed=3)
    return clean, clean + noise, noise


# --- strength -------------------------------------------------------------------------------------


def test_strength_zero_returns_the_input_bitwise():
    rng = np.random.default_rng(0)
    x = rng.normal(0, 300, (3, 20, 20)).astype(np.float32)
    x[0, 0, :3] = [-0.0, 3071.0, -1024.0]
    f = np.full_like(x, np.nan)  # even a broken result must not leak into strength 0
    out = strength_blend(x, f, 0.0)
    assert out.dtype == np.float32 and out is not x
    assert out.tobytes() == x.tobytes()


def test_strength_zero_on_integer_input_casts_back_exactly():
    x = np.random.default_rng(1).integers(-1024, 3072, (2, 16, 16)).astype(np.int16)
    out = cast_like_input(strength_blend(x, np.zeros(x.shape, np.float32), 0), x.dtype)
    assert out.dtype == np.int16 and np.array_equal(out, x)


def test_strength_one_is_the_full_result_and_between_is_linear():
    rng = np.random.default_rng(2)
    x = rng.normal(0, 100, (2, 16, 16)).astype(np.float32)
    f = ndimage.gaussian_filter(x, 1).astype(np.float32)
    assert strength_blend(x, f, 1.0).tobytes() == f.tobytes()
    np.testing.assert_allclose(strength_blend(x, f, 0.25), x - 0.25 * (x - f), atol=1e-4)
    np.testing.assert_allclose(strength_blend(x, f, "low"), x - STRENGTH_LEVELS["low"] * (x - f), atol=1e-4)


def test_strength_levels_and_invalid_values():
    assert STRENGTH_LEVELS["high"] == 1.0
    assert 0 < STRENGTH_LEVELS["low"] < STRENGTH_LEVELS["medium"] < 1
    assert resolve_strength("Medium") == STRENGTH_LEVELS["medium"]
    assert resolve_strength("0.3") == 0.3
    for bad in ("strong", 1.5, -0.1):
        with pytest.raises(InputError):
            resolve_strength(bad)
    with pytest.raises(InputError):
        strength_blend(np.zeros((2, 4, 4)), np.zeros((2, 4, 5)), 0.5)


@pytest.mark.parametrize("dtype", [np.int16, np.uint16, np.int32])
def test_cast_like_input_keeps_integer_dtype_and_range(dtype):
    values = np.array([-1024.4, -1000.6, 0.5, 1.5, 3071.2, 40000.0], np.float32).reshape(1, 1, 6)
    out = cast_like_input(values, dtype)
    info = np.iinfo(dtype)
    expected = np.clip(np.rint(values), info.min, info.max).astype(dtype)
    assert out.dtype == dtype and np.array_equal(out, expected)
    if dtype == np.int16:  # air and bone untouched, only the dtype's own range clips
        assert out.ravel().tolist() == [-1024, -1001, 0, 2, 3071, 32767]


def test_cast_like_input_floats_and_refuses_nan_for_integers():
    values = np.array([[[1.25, -3.5]]], np.float32)
    assert cast_like_input(values, np.float32) is values
    assert cast_like_input(values, np.float64).dtype == np.float64
    with pytest.raises(SelfSupCTDenoiseError, match="NaN or infinite values; nothing was written"):
        cast_like_input(np.array([[[np.nan]]], np.float32), np.int16)


# --- regions --------------------------------------------------------------------------------------


def test_region_stats_equal_numpy_on_the_same_slice():
    volume = np.random.default_rng(4).normal(40, 25, (5, 30, 40)).astype(np.float32)
    box = Box(1, 3, 5, 17, 8, 30)
    values = volume[1:3, 5:17, 8:30].astype(np.float64)
    stats = region_stats(volume, box)
    assert stats["n"] == values.size
    assert stats["mean"] == pytest.approx(values.mean(), abs=1e-9)
    assert stats["sd"] == pytest.approx(values.std(ddof=1), abs=1e-9)
    rows = compare_regions({"LDCT": volume, "noise map": volume - 40}, [box])
    assert [r["image"] for r in rows] == ["LDCT", "noise map"]
    assert rows[1]["mean"] == pytest.approx(stats["mean"] - 40, abs=1e-6)
    with pytest.raises(InputError):
        region_stats(volume, Box(0, 6, 0, 5, 0, 5))


def test_parse_box_in_voxels_and_mm():
    assert parse_box("1:3, 5:17,8:30") == Box(1, 3, 5, 17, 8, 30)
    spacing = (0.7, 0.7, 2.5)  # x, y, z
    # voxel centres at k * spacing from the first voxel's centre; [lo, hi) in mm, z/y/x order
    assert parse_box("2.5:10,0:7,0.7:7.7mm", spacing) == Box(1, 4, 0, 10, 1, 11)
    assert box_from_mm((0, 0, 0), (2.5, 0.71, 0.7), spacing) == Box(0, 1, 0, 2, 0, 1)
    for bad in ("1:3,5:17", "a:b,1:2,3:4", "3:1,0:2,0:2", "0.5:2,0:2,0:2"):
        with pytest.raises(InputError):
            parse_box(bad, spacing)
    with pytest.raises(InputError):
        parse_box("0:5,0:5,0:5mm")  # mm needs the spacing
    box = box_around((2, 10, 10), 5.0, (1.0, 1.0, 2.5), shape=(4, 20, 20))
    assert box.shape == (2, 5, 5) and box.fits((4, 20, 20))
    assert Box.from_dict(box.to_dict()) == box and str(box) == "2:4,8:13,8:13"


def test_uniform_region_finder_picks_the_flat_disc_not_its_edge():
    size = 96
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    image = np.full((size, size), -1000.0, np.float32)
    image[((xx - 48) / 44) ** 2 + ((yy - 48) / 40) ** 2 <= 1] = -700.0  # lung-like body: out of range
    disc = (xx - 34) ** 2 + (yy - 48) ** 2 <= 20 ** 2
    image[disc] = 50.0
    stripes = (np.abs(xx - 72) <= 10) & (np.abs(yy - 48) <= 20)
    image[stripes] = np.where(xx[stripes].astype(int) // 3 % 2 == 0, 0.0, 100.0)  # mean in range, not flat
    clean = np.repeat(image[None], 8, axis=0)
    noisy = clean + correlated_noise(clean.shape, 20.0, seed=5)
    boxes = find_uniform_regions(noisy, (1.0, 1.0, 2.0), n=3, size_mm=8.0)
    assert boxes, "no uniform region found"
    inner_disc = ndimage.binary_erosion(disc, iterations=2)
    for box in boxes:
        assert box.fits(clean.shape) and min(box.shape[1:]) >= 6
        assert inner_disc[box.slices[1:]].all(), f"{box} is not well inside the flat disc"
    for a in range(len(boxes)):
        for b in range(a + 1, len(boxes)):
            assert not boxes[a].overlaps(boxes[b])


def test_hu_shift_of_a_mean_preserving_smoother_is_zero_and_of_an_offset_is_the_offset(noisy_detail):
    clean, noisy, _ = noisy_detail
    smooth = ndimage.gaussian_filter(noisy, (0, 1.0, 1.0))
    mask = uniform_tissue_mask(noisy)
    assert mask.sum() > 5000 and not mask[clean < -500].any()
    boxes = find_uniform_regions(noisy, (0.8, 0.8, 2.5), n=3, size_mm=8.0)
    assert boxes
    for regions in (mask, boxes):
        shift = hu_shift(noisy, smooth, regions)
        assert abs(shift["overall"]) < 1.0 and shift["within_tolerance"], shift
        offset = hu_shift(noisy, noisy + 5.0, regions)
        assert offset["overall"] == pytest.approx(5.0, abs=1e-4) and not offset["within_tolerance"]
    assert len(hu_shift(noisy, smooth, boxes)["per_box"]) == len(boxes)
    with pytest.raises(InputError):
        hu_shift(noisy, noisy, [])
    with pytest.raises(InputError):
        hu_shift(noisy, noisy, np.zeros(noisy.shape, bool))


# --- method noise ---------------------------------------------------------------------------------


def _bilateral(volume, range_hu):
    return np.stack([sitk.GetArrayFromImage(sitk.Bilateral(sitk.GetImageFromArray(s), 1.5, range_hu))
                     for s in volume]).astype(np.float32)


def test_method_noise_separates_over_smoothing_from_noise_only_removal(noisy_detail):
    clean, noisy, noise = noisy_detail
    good = {
        "noise-only removal": clean,
        "half the noise removed": noisy - 0.5 * noise,
        "edge-preserving bilateral": _bilateral(noisy, 50.0),
    }
    bad = {f"Gaussian blur {s}px": ndimage.gaussian_filter(noisy, (0, s, s)) for s in (1.5, 2.0)}
    scores = {}
    for name, output in {**good, **bad}.items():
        result = method_noise_score(noisy, output)
        scores[name] = result["score"]
        expected = "noise" if name in good else "structure"
        assert result["level"] == expected, f"{name}: {result}"
    assert min(scores[n] for n in bad) - max(scores[n] for n in good) > 0.3, scores
    # the reading does not depend on how much of it is applied
    half_blur = strength_blend(noisy, bad["Gaussian blur 1.5px"], 0.5)
    assert method_noise_score(noisy, half_blur)["score"] == pytest.approx(scores["Gaussian blur 1.5px"], abs=1e-3)


def test_method_noise_of_nothing_removed_says_so(noisy_detail):
    _, noisy, _ = noisy_detail
    result = method_noise_score(noisy, noisy.copy())
    assert result["level"] == "empty" and result["score"] == 0.0 and "nothing" in result["reading"]
