import numpy as np
import pytest
import SimpleITK as sitk

from SelfSupCTDenoiseLib.errors import InputError
from SelfSupCTDenoiseLib.io import check_output_path, image_like, read_volume, write_volume


@pytest.mark.parametrize("suffix", [".nrrd", ".nii.gz", ".mha"])
def test_geometry_and_values_round_trip(ct_image, tmp_path, suffix):
    path = tmp_path / f"ct{suffix}"
    write_volume(ct_image, path)
    back = read_volume(path)
    assert back.GetSize() == ct_image.GetSize()
    np.testing.assert_allclose(back.GetSpacing(), ct_image.GetSpacing())
    np.testing.assert_allclose(back.GetOrigin(), ct_image.GetOrigin(), atol=1e-5)
    np.testing.assert_allclose(back.GetDirection(), ct_image.GetDirection(), atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(ct_image))


def test_dicom_series_folder_is_read_with_its_values(ct_image, tmp_path):
    folder = tmp_path / "series"
    folder.mkdir()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for z in range(ct_image.GetDepth()):
        s = ct_image[:, :, z]
        s.SetMetaData("0008|0060", "CT")
        s.SetMetaData("0020|000e", "1.2.826.0.1.3680043.2.1125.1")
        s.SetMetaData("0020|0032", "\\".join(map(str, ct_image.TransformIndexToPhysicalPoint((0, 0, z)))))
        s.SetMetaData("0020|0013", str(z))
        writer.SetFileName(str(folder / f"{z:03d}.dcm"))
        writer.Execute(s)
    image = read_volume(folder)
    np.testing.assert_allclose(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(ct_image))


def write(tmp_path, array, name="x.nrrd"):
    path = tmp_path / name
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    return path


@pytest.mark.parametrize("make, message", [
    (lambda: np.zeros((64, 64), np.int16) - 1000, "2D image"),
    (lambda: np.zeros((4, 4, 32, 32), np.float32), "4D image|values per voxel"),
    (lambda: np.random.default_rng(0).integers(0, 4, (4, 32, 32)).astype(np.uint8), "label map"),
    (lambda: np.where(np.eye(32)[None].repeat(3, 0) > 0, np.nan, -1000.0).astype(np.float32), "NaN"),
    (lambda: np.random.default_rng(0).uniform(0, 1, (4, 32, 32)).astype(np.float32), "Hounsfield"),
    (lambda: np.random.default_rng(0).integers(0, 4096, (4, 32, 32)).astype(np.uint16) + 900, "Hounsfield"),
])
def test_bad_inputs_get_clear_errors(tmp_path, make, message):
    with pytest.raises(InputError, match=message):
        read_volume(write(tmp_path, make()))


def test_vector_image_is_refused(tmp_path):
    path = tmp_path / "rgb.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 32, 32, 3), np.float32) - 1000, isVector=True), str(path))
    with pytest.raises(InputError, match="values per voxel"):
        read_volume(path)


def test_unreadable_and_missing_files(tmp_path):
    bad = tmp_path / "bad.nrrd"
    bad.write_text("this is not an image")
    with pytest.raises(InputError, match="Cannot read"):
        read_volume(bad)
    with pytest.raises(InputError, match="not found"):
        read_volume(tmp_path / "missing.nrrd")


def test_output_may_not_be_the_input_and_must_be_writable(ct_image, tmp_path):
    source = tmp_path / "in.nrrd"
    write_volume(ct_image, source)
    with pytest.raises(InputError, match="is the input"):
        check_output_path(tmp_path / "." / "in.nrrd", source)
    with pytest.raises(InputError, match="does not exist"):
        check_output_path(tmp_path / "nowhere" / "out.nrrd", source)
    with pytest.raises(InputError, match="Unsupported output type"):
        check_output_path(tmp_path / "out.png", source)


def test_failed_write_leaves_no_partial_file(ct_image, tmp_path, monkeypatch):
    def explode(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(sitk, "WriteImage", explode)
    with pytest.raises(RuntimeError):
        write_volume(ct_image, tmp_path / "out.nrrd")
    assert list(tmp_path.iterdir()) == []


def test_image_like_copies_geometry(ct_image):
    copy = image_like(np.zeros(sitk.GetArrayViewFromImage(ct_image).shape, np.float32), ct_image)
    assert copy.GetOrigin() == ct_image.GetOrigin() and copy.GetDirection() == ct_image.GetDirection()
