"""Geometry of real DICOM slices as scanners and archives deliver it: reversed slice order,
oblique orientation, a missing slice, uneven spacing and gantry tilt are each read right or
refused in one line, never read with a silently wrong geometry. Built from the real TCGA-THCA
slices of Testing/data/real_ct, their positions rewritten."""

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from SelfSupCTDenoiseLib.errors import InputError
from SelfSupCTDenoiseLib.files.volumes import read_volume

pydicom = pytest.importorskip("pydicom")

SOURCE = sorted((Path(__file__).parent / "data" / "real_ct" / "tcga_thca").glob("*.dcm"))


def series(folder: Path, offsets, row=(1.0, 0.0, 0.0), column=(0.0, 1.0, 0.0), sideways=0.0) -> Path:
    """Four slices (the three real ones, the first again) at `offsets` mm along the slice normal of
    the orientation (row, column), each `sideways` mm further along the column direction than the last."""
    folder.mkdir()
    row, column = np.asarray(row, float), np.asarray(column, float)
    normal = np.cross(row, column)
    origin = np.array([-249.51171875, -465.51171875, -1003.0])
    for k, offset in enumerate(offsets):
        ds = pydicom.dcmread(SOURCE[k % len(SOURCE)])
        ds.ImageOrientationPatient = [*row, *column]
        ds.ImagePositionPatient = [float(v) for v in origin + offset * normal + k * sideways * column]
        ds.InstanceNumber = k + 1
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
        ds.save_as(folder / f"slice{k}.dcm")
    return folder


def positions(folder: Path) -> np.ndarray:
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(folder.glob("*.dcm"))]
    return np.array([[float(v) for v in h.ImagePositionPatient] for h in headers])


def assert_grid_matches_the_slices(image: sitk.Image, folder: Path) -> None:
    """Every slice lies where the volume's grid puts one, and the grid's axes are the slices'."""
    grid = np.array([image.TransformIndexToPhysicalPoint((0, 0, k)) for k in range(image.GetSize()[2])])
    found = positions(folder)
    for point in found:
        assert np.min(np.linalg.norm(grid - point, axis=1)) < 1e-3
    ds = pydicom.dcmread(next(folder.glob("*.dcm")), stop_before_pixels=True)
    direction = np.array(image.GetDirection()).reshape(3, 3)
    np.testing.assert_allclose(direction[:, 0], [float(v) for v in ds.ImageOrientationPatient[:3]], atol=1e-6)
    np.testing.assert_allclose(direction[:, 1], [float(v) for v in ds.ImageOrientationPatient[3:]], atol=1e-6)


def test_slices_listed_top_down_are_read_on_a_right_handed_grid(tmp_path):
    folder = series(tmp_path / "down", [7.5, 5.0, 2.5, 0.0])  # z decreasing with the file order
    image = read_volume(folder)
    assert image.GetSpacing()[2] == pytest.approx(2.5)
    assert_grid_matches_the_slices(image, folder)


def test_an_oblique_series_keeps_its_orientation(tmp_path):
    angle = np.deg2rad(17.0)
    row, column = (np.cos(angle), np.sin(angle), 0.0), (0.0, 0.0, -1.0)  # coronal-oblique
    folder = series(tmp_path / "oblique", [0.0, 2.5, 5.0, 7.5], row, column)
    image = read_volume(folder)
    assert image.GetSpacing()[2] == pytest.approx(2.5)
    assert_grid_matches_the_slices(image, folder)


@pytest.mark.parametrize("offsets, what", [
    ([0.0, 2.5, 5.0, 10.0], "a missing slice"),
    ([0.0, 2.5, 5.0, 6.0], "uneven spacing"),
], ids=["missing", "uneven"])
def test_uneven_slice_positions_are_refused_in_one_line(tmp_path, offsets, what):
    refusal = r"not evenly spaced: slice\d\.dcm and slice\d\.dcm are [\d.]+ mm apart"
    with pytest.raises(InputError, match=refusal) as info:
        read_volume(series(tmp_path / "uneven", offsets))
    assert "\n" not in str(info.value), what


def test_a_gantry_tilted_series_is_refused_in_one_line(tmp_path):
    folder = series(tmp_path / "tilt", [0.0, 2.5, 5.0, 7.5], sideways=2.5 * np.tan(np.deg2rad(15.0)))
    with pytest.raises(InputError, match="shifted sideways.*gantry tilt"):
        read_volume(folder)
