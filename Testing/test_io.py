import numpy as np
import pytest
import SimpleITK as sitk

from SelfSupCTDenoiseLib.errors import InputError
from SelfSupCTDenoiseLib.files.volumes import check_output_path, image_like, read_volume, write_volume


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


def write_dicom_slices(image, folder):
    """One CT DICOM file per slice, 000.dcm, 001.dcm, ... (written by SimpleITK/GDCM)."""
    folder.mkdir()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for z in range(image.GetDepth()):
        s = image[:, :, z]
        s.SetMetaData("0008|0060", "CT")
        s.SetMetaData("0020|000e", "1.2.826.0.1.3680043.2.1125.1")
        s.SetMetaData("0020|0032", "\\".join(map(str, image.TransformIndexToPhysicalPoint((0, 0, z)))))
        s.SetMetaData("0020|0013", str(z))
        writer.SetFileName(str(folder / f"{z:03d}.dcm"))
        writer.Execute(s)
    return folder


def test_dicom_series_folder_is_read_with_its_values(ct_image, tmp_path):
    folder = write_dicom_slices(ct_image, tmp_path / "series")
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
    with pytest.raises(InputError, match="out.nrrd: disk full"):  # one line for the user, not a traceback
        write_volume(ct_image, tmp_path / "out.nrrd")
    assert list(tmp_path.iterdir()) == []


def test_image_like_copies_geometry(ct_image):
    copy = image_like(np.zeros(sitk.GetArrayViewFromImage(ct_image).shape, np.float32), ct_image)
    assert copy.GetOrigin() == ct_image.GetOrigin() and copy.GetDirection() == ct_image.GetDirection()


# --- a DICOM folder is read whole or not at all (issue #12, item 5) ---

@pytest.fixture()
def series8(tmp_path):
    """8 slices 2.5 mm apart (in-plane rotated), one file each: 000.dcm ... 007.dcm."""
    from SelfSupCTDenoiseLib.data.phantom import noisy_pair

    ldct, _ = noisy_pair(8, 32, 30.0, seed=3)
    image = sitk.GetImageFromArray(np.round(ldct).astype(np.int16))
    image.SetOrigin((-12.5, 30.25, 101.0))
    image.SetSpacing((0.7, 0.8, 2.5))
    image.SetDirection((0, 1, 0, -1, 0, 0, 0, 0, 1))
    return image, write_dicom_slices(image, tmp_path / "series")


def test_intact_dicom_series_with_bystander_files_is_read_whole(series8):
    image, folder = series8
    (folder / "README.txt").write_text("exported from PACS")
    (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (folder / "._000.dcm").write_bytes(b"\x00\x05\x16\x07 AppleDouble")  # macOS resource fork
    (folder / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    back = read_volume(folder)
    assert back.GetSize() == (32, 32, 8)
    np.testing.assert_allclose(back.GetSpacing(), (0.7, 0.8, 2.5), atol=1e-6)
    np.testing.assert_allclose(back.GetOrigin(), image.GetOrigin(), atol=1e-4)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(image))


@pytest.mark.parametrize("damage", ["truncated", "empty extra file"])
def test_unreadable_file_in_a_dicom_folder_is_refused_naming_it(series8, damage):
    from SelfSupCTDenoiseLib.files.dicom_out import read_source_series

    _, folder = series8
    if damage == "truncated":  # a copy cut short: GDCM drops it and reads 7 slices at 2.917 mm
        bad = folder / "004.dcm"
        bad.write_bytes(bad.read_bytes()[:1000])
    else:  # a slice named by its UID whose copy failed (no .dcm suffix, zero bytes)
        bad = folder / "1.2.826.0.1.3680043.2.1125.9"
        bad.write_bytes(b"")
    for read in (read_volume, read_source_series):
        with pytest.raises(InputError, match="cannot be read as DICOM") as error:
            read(folder)
        assert str(bad) in str(error.value)


def test_missing_slice_is_refused_naming_the_gap(series8):
    _, folder = series8
    (folder / "004.dcm").unlink()
    with pytest.raises(InputError, match=r"003\.dcm and 005\.dcm are 5 mm apart.*2\.5 mm") as error:
        read_volume(folder)
    assert "missing" in str(error.value)


@pytest.mark.parametrize("change, message", [
    ("no position", r"004\.dcm has no ImagePositionPatient"),
    ("tilted orientation", r"004\.dcm is oriented differently"),
    ("gantry tilt", r"shifted sideways"),
])
def test_slices_that_cannot_be_placed_on_one_grid_are_refused(series8, change, message):
    pydicom = pytest.importorskip("pydicom")
    image, folder = series8
    for k in range(8):
        path = folder / f"{k:03d}.dcm"
        ds = pydicom.dcmread(str(path))
        if change == "no position" and k == 4:
            del ds.ImagePositionPatient
        elif change == "tilted orientation" and k == 4:
            ds.ImageOrientationPatient = [0, 1, 0, -0.98, 0, 0.198997]
        elif change == "gantry tilt":  # each slice 0.5 mm further along y: SimpleITK would shear it
            position = np.array(image.TransformIndexToPhysicalPoint((0, 0, k))) + [0, 0.5 * k, 0]
            ds.ImagePositionPatient = [float(v) for v in position]
        else:
            continue
        ds.save_as(str(path))
    with pytest.raises(InputError, match=message):
        read_volume(folder)


def test_cli_refuses_a_damaged_dicom_folder_with_exit_2_and_writes_nothing(series8, tmp_path, capsys):
    from SelfSupCTDenoiseLib.cli import main

    _, folder = series8
    damaged = folder / "004.dcm"
    damaged.write_bytes(damaged.read_bytes()[:1000])
    files = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert main(["denoise", str(folder), str(tmp_path / "out"), "--dicom-out"]) == 2
    assert main(["denoise", str(folder), str(tmp_path / "out.nrrd")]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["series"]  # nothing written
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == files  # the input untouched
    errors = [line for line in capsys.readouterr().err.splitlines() if str(damaged) in line]
    assert len(errors) == 2 and all("cannot be read as DICOM" in line for line in errors)
