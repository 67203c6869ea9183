"""Study folders as real exports hold them: the axial CT series next to a localizer, a second
reconstruction, a dose report, a presentation state and a dose screen (secondary capture). Built
from the real TCGA-THCA slices of Testing/data/real_ct (their headers changed where another
object of the same study would differ)."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from SelfSupCTDenoiseLib.cli import main
from SelfSupCTDenoiseLib.errors import InputError
from SelfSupCTDenoiseLib.files.provenance_io import read_sidecar
from SelfSupCTDenoiseLib.files.volumes import read_volume

pydicom = pytest.importorskip("pydicom")
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, generate_uid  # noqa: E402

AXIAL = sorted((Path(__file__).parent / "data" / "real_ct" / "tcga_thca").glob("*.dcm"))
FAST = ["--steps", "0", "--quiet", "--device", "cpu", "--threads", "1"]


def _save_as_new(ds, path: Path, series_uid: str, number: int, description: str) -> None:
    ds.SeriesInstanceUID, ds.SeriesNumber, ds.SeriesDescription = series_uid, number, description
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(path)


def _non_image(folder: Path, sop_class: str, modality: str, number: int, name: str) -> None:
    """A dose report or presentation state of the study: no pixel data."""
    ref = pydicom.dcmread(AXIAL[0], stop_before_pixels=True)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = sop_class, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.PatientID, ds.Modality = ref.StudyInstanceUID, ref.PatientID, modality
    ds.SeriesInstanceUID, ds.SeriesNumber, ds.SeriesDescription = generate_uid(), number, name
    ds.save_as(folder / f"{name.replace(' ', '_')}.dcm", enforce_file_format=True)


def study(folder: Path, second_ct: bool = False) -> Path:
    """The axial series (#3) with a localizer (#1), a dose screen (#999), a dose report and a
    presentation state; `second_ct` adds a second reconstruction (#4, its values +7 HU)."""
    folder.mkdir()
    for path in AXIAL:
        shutil.copy(path, folder)
    scout = pydicom.dcmread(AXIAL[0])
    scout.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    scout.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    _save_as_new(scout, folder / "scout.dcm", generate_uid(), 1, "Topogram 0.6 T20s")
    screen = pydicom.dcmread(AXIAL[1])
    screen.SOPClassUID = screen.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    screen.Modality, screen.ImageType = "OT", ["DERIVED", "SECONDARY", "SCREEN SAVE"]
    _save_as_new(screen, folder / "dose_screen.dcm", generate_uid(), 999, "Patient Protocol")
    _non_image(folder, "1.2.840.10008.5.1.4.1.1.88.67", "SR", 997, "Dose Report")
    _non_image(folder, "1.2.840.10008.5.1.4.1.1.11.1", "PR", 998, "Presentation State")
    if second_ct:
        uid = generate_uid()
        for k, path in enumerate(AXIAL):
            ds = pydicom.dcmread(path)
            ds.PixelData = (ds.pixel_array + 7).astype(ds.pixel_array.dtype).tobytes()
            ds.ConvolutionKernel = "B70f"
            _save_as_new(ds, folder / f"recon2_{k}.dcm", uid, 4, "Recon 2 lung")
    return folder


def axial_array() -> np.ndarray:
    return sitk.GetArrayFromImage(read_volume(AXIAL[0].parent))


def test_a_study_folder_with_one_ct_series_reads_that_series(tmp_path):
    folder = study(tmp_path / "study")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read_volume(folder)), axial_array())


def test_several_ct_series_are_listed_in_one_line_and_one_is_picked_by_number_or_uid(tmp_path):
    folder = study(tmp_path / "study", second_ct=True)
    with pytest.raises(InputError) as info:
        read_volume(folder)
    message = str(info.value)
    assert "\n" not in message and "holds 2 CT image series" in message and "--series" in message
    assert '#3 "CT_Skull_To_Thigh  5.0  B30f": 3 slices, 5 mm, kernel B30f, ORIGINAL\\PRIMARY\\AXIAL' in message
    assert '#4 "Recon 2 lung": 3 slices, 5 mm, kernel B70f' in message
    assert '#1 "Topogram 0.6 T20s": 1 slice' in message and "localizer" in message
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read_volume(folder, series="3")), axial_array())
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read_volume(folder, series="4")), axial_array() + 7)
    uid = pydicom.dcmread(AXIAL[0], stop_before_pixels=True).SeriesInstanceUID
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read_volume(folder, series=uid)), axial_array())
    with pytest.raises(InputError, match=r"Series 5 is not in .*#3 .*#4 "):
        read_volume(folder, series="5")


def test_cli_denoises_a_study_folder_notes_what_it_left_out_and_records_the_series(tmp_path, tiny_bundle, capsys):
    folder = study(tmp_path / "study", second_ct=True)
    out = tmp_path / "out.nrrd"
    bundle = ["--bundle", str(tiny_bundle.path)]
    assert main(["denoise", str(folder), str(out), *bundle, *FAST]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "2 CT image series" in err[0] and not out.exists()
    assert main(["denoise", str(folder), str(out), *bundle, *FAST, "--series", "4"]) == 0
    printed = capsys.readouterr().out
    assert "left out" in printed and "localizer" in printed and "dose report" in printed
    record = read_sidecar(out)["input_series"]
    assert record["number"] == "4" and record["description"].startswith('#4 "Recon 2 lung"')
    for kind in ("localizer", "secondary capture", "structured report (dose report)", "presentation state",
                 '#3 "CT_Skull_To_Thigh'):
        assert kind in record["left_out"]


def test_dicom_out_from_a_study_folder_writes_the_picked_series(tmp_path, tiny_bundle):
    folder = study(tmp_path / "study", second_ct=True)
    out = tmp_path / "out"
    assert main(["denoise", str(folder), str(out), "--bundle", str(tiny_bundle.path), *FAST, "--series", "4",
                 "--dicom-out"]) == 0
    written = [pydicom.dcmread(p) for p in sorted(out.glob("*.dcm"))]
    assert len(written) == 3
    assert all(ds.SeriesDescription.startswith("Recon 2 lung") for ds in written)


def test_batch_and_cohort_take_the_series(tmp_path, tiny_bundle, capsys):
    from SelfSupCTDenoiseLib.cohort import task
    from SelfSupCTDenoiseLib.cohort.inputs import read_cohort
    from SelfSupCTDenoiseLib.engine.config import AdaptConfig

    inputs = tmp_path / "in"
    inputs.mkdir()
    study(inputs / "a", second_ct=True)
    study(inputs / "b", second_ct=True)
    out = tmp_path / "out"
    assert main(["denoise", str(inputs), str(out), "--bundle", str(tiny_bundle.path), *FAST, "--series", "4"]) == 0
    assert [read_sidecar(out / f"{n}_denoised.nrrd")["input_series"]["number"] for n in "ab"] == ["4", "4"]
    (tmp_path / "cohort.csv").write_text("path,series\nin/a,3\nin/b,\n")
    cohort_out = tmp_path / "cohort"
    cohort_out.mkdir()
    volumes = read_cohort([tmp_path / "cohort.csv"], cohort_out, AdaptConfig(steps=0, threads=1, device="cpu"),
                          series="4")
    assert [v.series for v in volumes] == ["3", "4"]  # the column, else the command line's --series
    specs = [task.volume_spec(v, "run1", tiny_bundle.path, None, dicom_out=False, force=False, denoise=True)
             for v in volumes]
    assert [task.process_volume(spec)["status"] for spec in specs] == ["done", "done"]
    assert [read_sidecar(cohort_out / f"{n}_denoised.nrrd")["input_series"]["number"] for n in "ab"] == ["3", "4"]


def test_a_folder_of_only_non_image_objects_says_what_it_holds(tmp_path):
    folder = tmp_path / "reports"
    folder.mkdir()
    _non_image(folder, "1.2.840.10008.5.1.4.1.1.88.67", "SR", 997, "Dose Report")
    with pytest.raises(InputError, match="without a DICOM image series"):
        read_volume(folder)


def test_series_on_a_volume_file_is_refused(tmp_path):
    path = tmp_path / "v.nrrd"
    sitk.WriteImage(read_volume(AXIAL[0].parent), str(path))
    with pytest.raises(InputError, match="--series picks a series of a DICOM folder"):
        read_volume(path, series="3")
