"""Provenance: NRRD header fields survive SimpleITK write/read; the JSON sidecar round-trips."""

import json
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from SelfSupCTDenoiseLib.engine.config import AdaptConfig
from SelfSupCTDenoiseLib.engine.provenance import build_provenance
from SelfSupCTDenoiseLib.errors import InputError
from SelfSupCTDenoiseLib.files.provenance_io import (FIELD_PREFIX, from_nrrd_fields, read_sidecar,
                                                     set_image_fields, sidecar_path, to_nrrd_fields,
                                                     write_sidecar)


@pytest.fixture()
def provenance():
    config = AdaptConfig(steps=7, seed=11, strength=0.75)
    return build_provenance(
        parameters=config, bundle={"name": "lite-v1", "sha256": "ab" * 32, "profile": "lite"},
        device="cpu (2 threads)", elapsed_s=12.34567, input_path="/data/patient folder/ldct.nrrd",
        timestamp="2026-11-25T10:00:00+00:00",
        run={"adaptation": {"final_loss": 0.0123, "teacher_updates": 3}, "guard": {"fell_back": False},
             "method_noise": {"score": 0.04, "reading": "noise map looks like noise"}})


def test_record_holds_what_made_the_output(provenance):
    assert provenance["versions"]["selfsupctdenoise"]
    assert provenance["versions"]["numpy"] == np.__version__
    assert provenance["versions"]["SimpleITK"]
    assert "torch" in provenance["versions"]  # from package metadata, not an import
    assert provenance["bundle"]["sha256"] == "ab" * 32
    assert provenance["seed"] == 11 and provenance["device"] == "cpu (2 threads)"
    assert provenance["parameters"] == AdaptConfig(steps=7, seed=11, strength=0.75).to_dict()
    assert provenance["elapsed_s"] == 12.346 and provenance["input"] == "ldct.nrrd"  # no folders kept
    json.dumps(provenance)  # JSON-ready as it is


def test_building_provenance_does_not_import_torch():
    code = ("import sys; from SelfSupCTDenoiseLib.engine.provenance import build_provenance; "
            "build_provenance(parameters={'seed': 0}); assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_nrrd_fields_are_flat_prefixed_strings(provenance):
    fields = to_nrrd_fields(provenance)
    assert all(k.startswith(FIELD_PREFIX) and isinstance(v, str) and "\n" not in v for k, v in fields.items())
    assert fields[FIELD_PREFIX + "parameters.steps"] == "7"
    assert fields[FIELD_PREFIX + "bundle.sha256"] == "ab" * 32
    assert fields[FIELD_PREFIX + "parameters.teacher_update"] == "true"


def test_nrrd_fields_survive_a_simpleitk_write_read_round_trip(tmp_path, provenance):
    image = sitk.GetImageFromArray(np.zeros((3, 4, 5), np.float32))
    image.SetSpacing((0.7, 0.7, 2.5))
    set_image_fields(image, provenance)
    path = tmp_path / "denoised.nrrd"
    sitk.WriteImage(image, str(path), True)
    back = sitk.ReadImage(str(path))
    read = {k: back.GetMetaData(k) for k in back.GetMetaDataKeys() if k.startswith(FIELD_PREFIX)}
    assert read == to_nrrd_fields(provenance)
    assert from_nrrd_fields(read) == json.loads(json.dumps(provenance))


def test_sidecar_round_trip(tmp_path, provenance):
    output = tmp_path / "denoised.nii.gz"
    path = write_sidecar(output, provenance)
    assert path == sidecar_path(output) == tmp_path / "denoised.nii.gz.json"
    assert read_sidecar(output) == read_sidecar(path) == json.loads(json.dumps(provenance))
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left
    (tmp_path / "other.json").write_text('{"a": 1}')
    with pytest.raises(InputError):
        read_sidecar(tmp_path / "other.json")
    with pytest.raises(InputError):
        read_sidecar(tmp_path / "missing.nrrd")
