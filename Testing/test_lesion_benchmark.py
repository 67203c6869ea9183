"""The lesion benchmark end to end on a tiny phantom subject: projection-domain noise through the
discs, rows of the benchmark, contrast retained, CNR, d', report section kept by the benchmark."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from SelfSupCTDenoiseLib.bench.benchmark import replace_marked_section, write_report
from SelfSupCTDenoiseLib.bench.lesion_benchmark import (SECTION, build_lesion_volume, merge_lesion_results,
                                                        run_lesion_benchmark, write_lesion_report)
from SelfSupCTDenoiseLib.cli import main
from SelfSupCTDenoiseLib.data.phantom import clean_phantom

SIZES, CONTRASTS = (3.0, 6.0), (20.0,)
ROWS = ("LDCT", "shipped default", "oracle", "anisotropic diffusion")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """One held-out phantom subject (1 mm pixels), its noise-free slices as the `clean` reference."""
    root = tmp_path_factory.mktemp("sim")
    (root / "phantom").mkdir()
    image = sitk.GetImageFromArray(clean_phantom(2, 96, seed=5))
    image.SetSpacing((1.0, 1.0, 2.0))
    sitk.WriteImage(image, str(root / "phantom" / "clean.nrrd"))
    (root / "manifest.json").write_text(json.dumps({
        "subjects": [{"key": "phantom", "split": "test", "i0_full": 2.0e4}], "tags": ["d25_hann"],
        "simulation": {"sigma_e_counts": 10.0}}), encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def results(dataset, tiny_bundle):
    return run_lesion_benchmark(dataset, tiny_bundle, tags=["d25_hann"], steps=3, layouts=3, repeats=3,
                                sizes=SIZES, contrasts=CONTRASTS, n_bootstrap=50, rows=ROWS, log=lambda line: None)


def test_noise_is_simulated_through_the_discs_and_the_oracle_gets_another_copys_noise(dataset):
    clean = sitk.GetArrayFromImage(sitk.ReadImage(str(dataset / "phantom" / "clean.nrrd")))
    volume = build_lesion_volume(clean, (1.0, 1.0, 2.0), "phantom", "d25_hann", i0_full=2.0e4, sigma_e=10.0,
                                 layouts=2, repeats=2, seed=0, sizes=SIZES, contrasts=CONTRASTS)
    assert len(volume.ldct) == 2 * 2 * 2 and volume.present.tolist() == [True, True, False, False] * 2
    noise = volume.ldct - volume.truth
    assert 5.0 < noise.std() < 200.0
    # every copy its own draw; same truth within a group
    assert np.array_equal(volume.truth[0], volume.truth[1]) and not np.allclose(noise[0], noise[1])
    assert np.array_equal(volume.oracle_noise[0], noise[1]) and np.array_equal(volume.oracle_noise[1], noise[0])
    # the discs are in the present copies' truth only, at the recorded positions
    lesion = volume.layouts[0][0]
    difference = volume.truth[0] - volume.truth[2]
    assert difference[lesion.y, lesion.x] == pytest.approx(lesion.contrast_hu, abs=0.5)
    assert np.count_nonzero(difference) < 0.05 * difference.size
    # the same layouts at another dose (paired across doses), other noise
    other = build_lesion_volume(clean, (1.0, 1.0, 2.0), "phantom", "d12_hann", i0_full=2.0e4, sigma_e=10.0,
                                layouts=2, repeats=2, seed=0, sizes=SIZES, contrasts=CONTRASTS)
    assert other.layouts == volume.layouts
    assert (other.ldct - other.truth).std() > noise.std() * 1.2


def test_every_row_size_and_contrast_is_measured(results):
    cells = {(r["method"], r["diameter_mm"], r["contrast_hu"]) for r in results["rows"]}
    methods = {m for m, _, _ in cells}
    assert len(methods) == len(ROWS) + 1  # and the shipped default at strength low
    assert any("strength low (0.5)" in m for m in methods)
    assert len(cells) == len(methods) * len(SIZES) * len(CONTRASTS)
    row = results["rows"][0]
    assert row["n_present"] == row["n_absent"] == 3 * 2 * 3  # layouts x signs x repeats
    assert row["n_positions"] == 6


def test_ldct_keeps_the_inserted_contrast_and_the_observer_sees_the_discs(results):
    by = {(r["method"], r["diameter_mm"]): r for r in results["rows"]}
    for size in SIZES:
        ldct = by[("LDCT", size)]
        # the LDCT is the truth plus zero-mean noise: contrast retained is 1 up to its standard error
        assert abs(ldct["contrast_retained"] - 1.0) < 3 * ldct["contrast_retained_se"] + 0.05
        assert 0.02 < ldct["contrast_retained_se"] < 0.3
        assert ldct["dprime"] > 1.0 and 0 < ldct["dprime_se"] < ldct["dprime"]
        assert ldct["cnr"] > 0.3
    # a smoothing filter lowers the pixel noise
    diffusion = next(m for m, _ in by if "anisotropic" in m)
    assert by[(diffusion, 6.0)]["noise_sd_hu"] < 0.8 * by[("LDCT", 6.0)]["noise_sd_hu"]


def test_report_section_is_replaced_in_place_and_kept_by_the_benchmark_report(results, tmp_path):
    report = tmp_path / "BENCHMARK.md"
    report.write_text("# Benchmark\n\nolder text\n", encoding="utf-8")
    merged = merge_lesion_results([json.loads(json.dumps(results))])
    write_lesion_report(merged, tmp_path / "lesions", report)
    write_lesion_report(merged, tmp_path / "lesions", report)  # twice: replaced, not appended
    text = report.read_text(encoding="utf-8")
    assert text.startswith("# Benchmark\n\nolder text\n") and text.count(f"section {SECTION} start") == 1
    assert "| d25_hann | LDCT |" in text and "](lesions/dprime_vs_size.png)" in text
    assert (tmp_path / "lesions" / "dprime_vs_size.png").stat().st_size > 10_000
    assert "records" not in json.loads((tmp_path / "lesions" / "lesions.json").read_text(encoding="utf-8"))
    # the benchmark rewrites its report from scratch: the lesion section stays
    write_report({"rows": [], "curves": [], "estimator": [], "nps_ratios": {}, "band_edges": [0, 0.5],
                  "meta": {"commit": "x", "date": "d", "device": "cpu", "quick": True, "steps": 1, "subjects": [],
                           "bundles": {}, "protocols": [], "tags": []}}, tmp_path, "selfsupctdenoise benchmark")
    rewritten = report.read_text(encoding="utf-8")
    assert "older text" not in rewritten and rewritten.count("| d25_hann | LDCT |") == text.count("| d25_hann | LDCT |")
    replace_marked_section(report, SECTION, "## replaced")
    replaced = report.read_text(encoding="utf-8")
    assert "## replaced" in replaced and "| d25_hann | LDCT |" not in replaced


def test_cli_refuses_bad_counts_without_running(capsys):
    assert main(["benchmark-lesions", "--repeats", "1"]) == 2
    assert "--repeats" in capsys.readouterr().err


def test_every_filter_row_of_the_lesion_benchmark_works_slice_by_slice(tiny_bundle):
    """The lesion volume stacks copies of one slice with independent noise: a filter that smooths
    across slices would average noise realisations of the identical image and look better than it
    is. So changing one copy must leave every other copy's output unchanged, for every row."""
    from SelfSupCTDenoiseLib.bench.lesion_benchmark import ROWS as SHIPPED_ROWS, lesion_rows
    from SelfSupCTDenoiseLib.engine.config import AdaptConfig
    from SelfSupCTDenoiseLib.engine.run import estimate_input_noise

    rng = np.random.default_rng(0)
    stack = np.repeat(clean_phantom(1, 64, seed=5), 4, axis=0) + rng.normal(0, 30, (4, 64, 64)).astype(np.float32)
    changed = stack.copy()
    changed[1] += rng.normal(0, 30, (64, 64)).astype(np.float32)
    context = {"spacing": (1.0, 1.0, 1.0), "bundle": tiny_bundle,
               "estimate": estimate_input_noise(stack, tiny_bundle, AdaptConfig())}
    filters = [m for m in lesion_rows(SHIPPED_ROWS) if m.filter is not None and m.name != "LDCT"]
    assert filters  # diffusion and BM3D
    for method in filters:
        before, after = method.filter(stack, context), method.filter(changed, context)
        for z in (0, 2, 3):
            np.testing.assert_allclose(after[z], before[z], atol=0.01, err_msg=method.name)  # float rounding only
