"""The benchmark end to end on a tiny two-subject dataset: rows, estimator, NPS ratios, merge, report."""

import json

import numpy as np
import pytest
import SimpleITK as sitk

from SelfSupCTDenoiseLib.bench.benchmark import merge_results, run_benchmark, write_report
from SelfSupCTDenoiseLib.data.phantom import clean_phantom, correlated_noise

ROWS = ["LDCT", "N2C (pretrained)", "shipped default", "oracle"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Held-out phantoms at 45 HU (the bundle was trained at 30: an unseen dose), both protocols."""
    root = tmp_path_factory.mktemp("sim")
    subjects = []
    for i in range(2):
        key = f"phantom{i}"
        (root / key).mkdir()
        clean = clean_phantom(3, 64, seed=20 + i)
        files = {"ndct": clean + correlated_noise(clean.shape, 5.0, seed=30 + i),  # its own noise
                 "clean": clean}
        files["ldct_d25_hann"] = files["ndct"] + correlated_noise(clean.shape, 45.0, seed=40 + i)
        files["clean_ldct_d25_hann"] = clean + correlated_noise(clean.shape, 45.0, seed=50 + i)
        for name, array in files.items():
            sitk.WriteImage(sitk.GetImageFromArray(array.astype(np.float32)), str(root / key / f"{name}.nrrd"))
        subjects.append({"key": key, "split": "test", "ndct_noise_sd_hu": 5.0})
    (root / "manifest.json").write_text(json.dumps({"subjects": subjects, "tags": ["d25_hann"]}))
    return root


@pytest.fixture(scope="module")
def results(dataset, tiny_bundle):
    return run_benchmark(dataset, {"n2c": tiny_bundle}, quick=True, tags=["d25_hann"],
                         protocols=["ndct", "clean"], steps=20, log=lambda line: None, rows_filter=ROWS,
                         strengths=False)


def test_rows_cover_every_protocol_subject_and_requested_method(results):
    cases = {(r["protocol"], r["subject"], r["method"]) for r in results["rows"]}
    methods = {m for _, _, m in cases}
    assert len(methods) == len(ROWS) and all(any(text in m for m in methods) for text in ROWS)
    assert len(cases) == 2 * 2 * len(ROWS)
    for r in results["rows"]:
        assert np.isfinite(r["psnr_soft"]) and 0 < r["ssim_soft"] <= 1
    by = {(r["protocol"], r["subject"], r["method"]): r["psnr_soft"] for r in results["rows"]}
    for protocol in ("ndct", "clean"):
        for subject in ("phantom0", "phantom1"):
            assert by[(protocol, subject, "N2C (pretrained)")] > by[(protocol, subject, "LDCT")] + 1.0


def test_every_row_says_how_much_grain_is_left_and_of_what_size(results):
    """The over-smoothing columns: the untouched input in the clean protocol is its own noise (peak
    ratio exactly 1, 45 HU over the NDCT's 5 HU); a denoiser leaves less noise than the input."""
    for r in results["rows"]:
        assert r["nps_peak_ratio"] > 0 and r["noise_vs_ndct"] > 0
    ldct = [r for r in results["rows"] if r["method"] == "LDCT" and r["protocol"] == "clean"]
    for r in ldct:
        assert r["nps_peak_ratio"] == 1.0
        assert r["noise_vs_ndct"] == pytest.approx(45.0 / 5.0, rel=0.2)
        pretrained = next(p for p in results["rows"] if p["method"] == "N2C (pretrained)"
                          and (p["protocol"], p["subject"]) == ("clean", r["subject"]))
        assert pretrained["noise_vs_ndct"] < 0.8 * r["noise_vs_ndct"]


def test_texture_left_tells_a_waxy_result_from_one_that_keeps_the_grain():
    from scipy import ndimage

    from SelfSupCTDenoiseLib.bench.benchmark import texture_left

    reference = clean_phantom(4, 128, seed=3)
    noise = correlated_noise(reference.shape, 40.0, seed=4)
    uniform = np.zeros(reference.shape, bool)
    uniform[:, 54:74, 54:74] = True
    kept = texture_left(reference + 0.5 * noise, reference + noise, reference, uniform, 10.0)
    waxy_noise = np.stack([ndimage.gaussian_filter(n, 2.5) for n in noise])
    waxy = texture_left(reference + waxy_noise, reference + noise, reference, uniform, 10.0)
    assert kept["nps_peak_ratio"] == pytest.approx(1.0, abs=0.15)
    assert waxy["nps_peak_ratio"] < 0.7
    assert kept["noise_vs_ndct"] == pytest.approx(0.5 * np.std(noise[uniform]) / 10.0, rel=1e-6)
    assert texture_left(reference, reference + noise, reference, uniform, None)["noise_vs_ndct"] is None


def test_estimator_and_nps_ratios_are_recorded_per_protocol(results):
    clean = [e for e in results["estimator"] if e["protocol"] == "clean"]
    assert {e["protocol"] for e in results["estimator"]} == {"ndct", "clean"} and len(clean) == 2
    for e in clean:  # the inserted noise is the input's whole noise here
        assert e["true_std_hu"] == pytest.approx(45.0, rel=0.1)
        assert abs(e["error_percent"]) < 25
    assert set(results["nps_ratios"]) == {"phantom0/d25_hann", "phantom1/d25_hann"}
    fitted = np.asarray(results["nps_ratios"]["phantom0/d25_hann"]["fitted NPS (input level)"])
    assert np.all(np.isfinite(fitted)) and np.all(fitted > 0)


def test_parts_merge_without_duplicates_and_the_report_is_written(results, tmp_path):
    halves = [dict(results, rows=[r for r in results["rows"] if r["protocol"] == p]) for p in ("ndct", "clean")]
    halves[1] = dict(halves[1], meta=dict(results["meta"], date="2999-01-01 00:00 UTC"))
    merged = merge_results([halves[0], results, halves[1]])  # overlapping parts: each row once
    assert merged["meta"]["date"] == "2999-01-01 00:00 UTC"  # the newest part's
    assert len(merged["rows"]) == len(results["rows"])
    assert len(merged["estimator"]) == len(results["estimator"])
    assert results["curves"] and len(merged["curves"]) == len(results["curves"])  # a curve once too
    report = write_report(merged, tmp_path, "test").read_text(encoding="utf-8")
    assert "## Protocol `clean`, d25_hann" in report and "## Protocol `ndct`, d25_hann" in report
    assert "| clean | phantom0 | d25_hann |" in report  # the estimator table
    assert (tmp_path / "benchmark.json").exists() and (tmp_path / "benchmark_nps_ratio.png").exists()
    # a part run with another bundle in the same role is named, not overwritten
    other = dict(halves[1], meta=dict(results["meta"], bundles={"n2c": {**results["meta"]["bundles"]["n2c"],
                                                                         "sha256": "f" * 64, "path": "elsewhere"}}))
    bundles = merge_results([halves[0], other])["meta"]["bundles"]
    assert bundles["n2c"]["sha256"] == results["meta"]["bundles"]["n2c"]["sha256"]
    assert bundles["n2c, part 2"]["path"] == "elsewhere"


def test_supervised_ceiling_runs_on_the_clean_protocol_only_and_bm3d_uses_the_estimate(dataset, tiny_bundle):
    rows = run_benchmark(dataset, {"n2c": tiny_bundle}, quick=False, tags=["d25_hann"], protocols=["ndct", "clean"],
                         steps=60, log=lambda line: None, rows_filter=["pretrained", "ceiling", "BM3D"],
                         strengths=False)["rows"]
    by = {(r["protocol"], r["subject"], r["method"].split(" (")[0]): r["psnr_soft"] for r in rows}
    ceiling = "N2C + supervised ceiling"
    assert {k for k in by if k[2] == ceiling} == {("clean", "phantom0", ceiling), ("clean", "phantom1", ceiling)}
    for subject in ("phantom0", "phantom1"):
        # fine-tuned on the noise-free reference of the same volume: it must get closer to it
        assert by[("clean", subject, ceiling)] > by[("clean", subject, "N2C")] + 0.05
        # BM3D given the estimated level and texture of 45 HU noise removes most of it: well ahead of
        # the pretrained model, which was trained at 30 HU (measured +2.6 and +3.2 dB)
        assert by[("clean", subject, "BM3D with the noise PSD")] > by[("clean", subject, "N2C")] + 2.0


def test_guarded_rows_keep_the_guard_numbers_and_what_a_fallback_turned_down(dataset, tiny_bundle, monkeypatch):
    import SelfSupCTDenoiseLib.engine.run as engine_run

    monkeypatch.setattr(engine_run, "guard_rejects", lambda adapted, pretrained, estimated: True)
    results = run_benchmark(dataset, {"n2c": tiny_bundle}, quick=True, tags=["d25_hann"], protocols=["clean"],
                            steps=20, log=lambda line: None, rows_filter=["N2C (pretrained)", "shipped default"],
                            strengths=False)
    by = {(r["subject"], r["method"].split(" ")[1]): r for r in results["rows"]}
    for subject in ("phantom0", "phantom1"):
        pretrained, guarded = by[(subject, "(pretrained)")], by[(subject, "+")]
        guard = guarded["guard"]
        assert guarded["guard_fell_back"] and guarded["psnr_soft"] == pretrained["psnr_soft"]
        assert guard["removed_std_adapted_hu"] > 0 and guard["estimated_noise_std_hu"] > 0
        # the turned-down adapted output is scored too, and differs from the pretrained one
        assert np.isfinite(guard["psnr_soft_unguarded"]) and guard["psnr_soft_unguarded"] != pretrained["psnr_soft"]
        assert "guard" not in pretrained


def test_diffusion_runs_on_the_volume_and_slice_by_slice_only_when_asked():
    """The Slicer filter as users run it sees the neighbouring slices; its 2D row must not."""
    from SelfSupCTDenoiseLib.bench.benchmark import anisotropic_diffusion, methods

    clean = clean_phantom(5, 48, seed=3)
    volume = (clean + correlated_noise(clean.shape, 40.0, seed=4)).astype(np.float32)
    context = {"spacing": (1.0, 1.0, 1.0)}
    slice_only = anisotropic_diffusion(volume[2:3], context)  # one slice: no neighbours to use
    in_volume = anisotropic_diffusion(volume, context)[2]
    by_slice = anisotropic_diffusion(volume, context, slice_by_slice=True)[2]
    assert np.abs(in_volume - slice_only[0]).mean() > 1.0  # the 3D filter used the other slices
    assert np.allclose(by_slice, anisotropic_diffusion(volume[2:3], context, slice_by_slice=True)[0], atol=1e-4)
    assert np.abs(by_slice - volume[2]).std() > 5.0  # and the 2D one still filtered
    rows = [m.name for m in methods() if m.filter is not None and "diffusion" in m.name]
    assert len(rows) == 2 and any("slice by slice" in name for name in rows)


@pytest.mark.parametrize("command", ["benchmark", "benchmark-lesions"])
def test_benchmarks_write_under_out_unless_told_to_write_the_committed_docs(command):
    """A benchmark run by default must not overwrite the committed reports in docs/ (issue 29)."""
    from SelfSupCTDenoiseLib.cli import build_parser

    args = build_parser().parse_args([command])
    written = [args.out] + ([args.report] if command == "benchmark-lesions" else [])
    assert all(path.parts[0] == "out" for path in written), written
    assert build_parser().parse_args([command, "--out", "docs/x"]).out.as_posix() == "docs/x"



def test_the_one_command_runs_the_rows_of_the_committed_report_and_merges_them(tmp_path):
    """scripts/reproduce_benchmark.sh (the README's table in one command), run with a stand-in for the
    CLI that records its calls: four parts and a merge of exactly those parts, whose --rows select, by
    the benchmark's own scopes, the (protocol, row) pairs of the committed docs/benchmark_200_steps/."""
    import os
    import shlex
    import subprocess
    import sys
    from pathlib import Path

    from SelfSupCTDenoiseLib.bench.benchmark import _in_scope, methods
    from SelfSupCTDenoiseLib.cli import build_parser
    from SelfSupCTDenoiseLib.engine.strength import STRENGTH_LEVELS

    root = Path(__file__).resolve().parents[1]
    calls, cli = tmp_path / "calls.txt", tmp_path / "cli.sh"
    # one write per call: the script runs parts in parallel, and printf writes once per argument
    cli.write_text(f'#!/usr/bin/env bash\nline=$(printf "%q " "$@")\necho "$line" >> {calls}\n')
    cli.chmod(0o755)
    done = subprocess.run(["bash", str(root / "scripts" / "reproduce_benchmark.sh"), str(tmp_path / "bench")],
                          env={**os.environ, "SELFSUPCTDENOISE": str(cli), "PYTHON": sys.executable},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "its rows took" in done.stdout and "hours of one CPU core" in done.stdout  # the cost, first
    *parts, merge = [build_parser().parse_args(shlex.split(line)) for line in calls.read_text().splitlines()]
    assert sorted(map(str, merge.merge)) == sorted(str(p.json_only) for p in parts) and merge.out == tmp_path / "bench"
    assert all(p.steps == 200 and str(p.dataset) == "data/sim" for p in parts)
    made = set()
    for part in parts:
        for method in methods():
            if method.bundle == "n2c" and any(text in method.name for text in part.rows) and any(
                    _in_scope(method, protocol, tag, False) for protocol in part.protocols for tag in part.tags):
                made |= {(protocol, method.name) for protocol in part.protocols}
                if method.steps_curve:  # its strength levels are blends of the same run
                    made |= {(protocol, f"{method.name}, strength {name} ({value})") for protocol in part.protocols
                             for name, value in STRENGTH_LEVELS.items() if value != 1.0}
    committed = json.loads((root / "docs" / "benchmark_200_steps" / "benchmark.json").read_text(encoding="utf-8"))
    assert made == {(r["protocol"], r["method"]) for r in committed["rows"]}
    assert {(p, t) for part in parts for p in part.protocols for t in part.tags} == {
        (p, t) for p in committed["meta"]["protocols"] for t in committed["meta"]["tags"]}
