"""A target noise level (issue 29, item 6): the strength is chosen so that the result's noise SD in
uniform tissue is the one asked for; the choice is recorded, and the option works from the command
line (one volume and batch), a --config file, a cohort manifest and the Slicer panel's config."""

import argparse
import json
import re

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from SelfSupCTDenoiseLib.cli import main
from SelfSupCTDenoiseLib.commands.options import add_adapt_arguments, config_from_args
from SelfSupCTDenoiseLib.data.phantom import clean_phantom, correlated_noise
from SelfSupCTDenoiseLib.engine.config import AdaptConfig
from SelfSupCTDenoiseLib.engine.provenance import applied_strength
from SelfSupCTDenoiseLib.engine.strength import strength_blend
from SelfSupCTDenoiseLib.engine.target_noise import strength_for_target
from SelfSupCTDenoiseLib.errors import InputError
from SelfSupCTDenoiseLib.files.provenance_io import read_sidecar


def uniform_tissue(clean):
    """The phantom's 40 HU body tissue, 3 pixels away from anything else: where noise SD is read."""
    return np.stack([ndimage.binary_erosion(s == 40.0, iterations=3) for s in clean])


def phantom(sigma, slices=4, size=128, seed=3):
    clean = clean_phantom(slices, size, seed)
    return clean + correlated_noise(clean.shape, sigma, seed + 1000), clean


def test_the_strength_solves_for_the_target_whatever_the_denoiser_leaves():
    """No model: a 'denoiser' that keeps a smoothed fifth of the noise, so the residual is correlated
    with the input's noise, as a real one's is. The SD read on the phantom's own uniform tissue
    (not the engine's region) lands on each target; targets out of reach say so."""
    noisy, clean = phantom(30.0)
    kept = ndimage.gaussian_filter(noisy - clean, (0, 1.5, 1.5))
    full = clean + 6.0 * kept / kept.std()
    tissue = uniform_tissue(clean)
    for target in (8.0, 15.0, 22.0):
        record = strength_for_target(noisy, full, target, estimated_noise_hu=29.0)
        output = strength_blend(noisy, full, record["strength"])
        assert 0 < record["strength"] < 1 and record["note"] is None
        assert abs(output[tissue].std() - target) < 0.1 * target, (target, record, output[tissue].std())
        assert record["requested_hu"] == target and record["estimated_input_hu"] == 29.0
    above = strength_for_target(noisy, full, 45.0)
    assert above["strength"] == 0.0 and "at or below the target" in above["note"]
    below = strength_for_target(noisy, full, 2.0)
    assert below["strength"] == 1.0 and "more than the target" in below["note"]
    assert below["expected_sd_hu"] == below["full_strength_sd_hu"]


def parse(argv):
    parser = argparse.ArgumentParser()
    add_adapt_arguments(parser)
    return config_from_args(parser.parse_args(argv))


@pytest.mark.parametrize("argv, message", [
    (["--strength", "0.5", "--target-noise", "10"], "either --strength or --target-noise"),
    (["--strength", "high", "--target-noise", "10"], "either --strength or --target-noise"),
    (["--target-noise", "-3"], "target_noise must be >= 0 HU"),
    (["--target-noise", "nan"], "target_noise must be a finite number"),
    (["--target-noise", "inf"], "target_noise must be a finite number"),
])
def test_a_target_with_a_strength_or_out_of_range_is_refused(argv, message):
    with pytest.raises(InputError, match=re.escape(message)):
        parse(argv)


def test_the_target_comes_from_flags_config_files_and_manifests(tmp_path):
    from SelfSupCTDenoiseLib.cohort.inputs import read_cohort

    assert parse(["--target-noise", "12"]).target_noise == 12.0
    config = tmp_path / "params.json"
    config.write_text(json.dumps({"target_noise": 15, "steps": 5}))
    assert parse(["--config", str(config)]).target_noise == 15
    config.write_text(json.dumps({"target_noise": 15, "strength": 0.5}))
    with pytest.raises(InputError, match="either strength or target_noise"):
        parse(["--config", str(config)])
    for name in ("a", "b", "c"):
        sitk.WriteImage(sitk.GetImageFromArray(np.zeros((2, 16, 16), np.int16)), str(tmp_path / f"{name}.nrrd"))
    (tmp_path / "m.csv").write_text("path,target-noise,strength\na.nrrd,12.5,\nb.nrrd,,low\nc.nrrd,,\n")
    volumes = read_cohort([tmp_path / "m.csv"], tmp_path / "out", AdaptConfig(target_noise=20.0))
    # a row's strength replaces the command line's target, and a row's target its strength
    assert [(v.config.target_noise, v.config.strength) for v in volumes] == [(12.5, 1.0), (None, 0.5), (20.0, 1.0)]
    assert read_cohort([tmp_path / "m.csv"], tmp_path / "out", AdaptConfig(strength=0.75))[0].config.target_noise == 12.5
    (tmp_path / "bad.csv").write_text("path,target-noise,strength\na.nrrd,10,low\n")
    with pytest.raises(InputError, match="either strength or target_noise"):
        read_cohort([tmp_path / "bad.csv"], tmp_path / "out", AdaptConfig())
    (tmp_path / "bad.csv").write_text("path,target_noise\na.nrrd,quiet\n")
    with pytest.raises(InputError, match="line 2: target_noise takes a number"):
        read_cohort([tmp_path / "bad.csv"], tmp_path / "out", AdaptConfig())


def test_the_command_line_refuses_a_target_with_a_strength_in_one_line(tmp_path, capsys):
    source = tmp_path / "in.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(phantom(30.0, 2, 32)[0]), str(source))
    for extra in (["--strength", "low", "--target-noise", "10"], ["--target-noise", "-1"]):
        assert main(["denoise", str(source), str(tmp_path / "out.nrrd"), *extra]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "target" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.nrrd"]  # nothing written


#: The phantom's noise and two targets: the tiny test model leaves about 20 HU of 30, so that the
#: input (30 HU) is more than 20 % off the first target and the full result more than 20 % off the second:
#: neither strength 0 nor strength 1 passes both.
SIGMA, TARGETS = 30.0, (21.0, 27.0)
FAST = ["--steps", "4", "--period", "2", "--batch-size", "4", "--patch-size", "32", "--quiet"]


def test_the_result_noise_lands_on_the_target_on_a_phantom(tiny_bundle, tmp_path, capsys):
    """Real torch, real files: a batch at one target and a single volume at another; the noise SD of
    each result in the phantom's uniform tissue is within 20% of its target (see TARGETS)."""
    noisy, clean = phantom(SIGMA)
    tissue = uniform_tissue(clean)
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    sitk.WriteImage(sitk.GetImageFromArray(noisy), str(folder / "ph.nrrd"))
    bundle = ["--bundle", str(tiny_bundle.path)]
    assert main(["denoise", str(folder), str(out), "--target-noise", str(TARGETS[0]), *bundle, *FAST]) == 0
    assert "target noise" in capsys.readouterr().out
    assert main(["denoise", str(folder / "ph.nrrd"), str(tmp_path / "single.nrrd"), "--target-noise",
                 str(TARGETS[1]), *bundle, *FAST]) == 0
    for target, path in zip(TARGETS, (out / "ph_denoised.nrrd", tmp_path / "single.nrrd")):
        record = read_sidecar(path)
        chosen = record["run"]["target_noise"]
        assert record["parameters"]["target_noise"] == target and chosen["requested_hu"] == target
        assert chosen["estimated_input_hu"] == pytest.approx(record["run"]["estimated_noise_std_hu"], abs=0.01)
        assert applied_strength(record) == chosen["strength"]
        result = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
        sd = float(result[tissue].std())
        assert abs(sd - target) <= 0.2 * target, (target, sd, chosen)
        assert 0 < chosen["strength"] < 1 and chosen["note"] is None
    full_sd = chosen["full_strength_sd_hu"]  # what the model leaves (the run's measure)
    assert abs(noisy[tissue].std() - TARGETS[0]) > 0.2 * TARGETS[0] and abs(full_sd - TARGETS[1]) > 0.2 * TARGETS[1]
    # the batch's resume rule: another target is another setting
    assert main(["denoise", str(folder), str(out), "--target-noise", "30", *bundle, *FAST]) == 2
    assert "target_noise" in capsys.readouterr().err
