"""DICOM output: a synthetic CT series in, a derived series out, read back by SimpleITK and pydicom."""

import shutil
import subprocess

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from scipy import ndimage

from SelfSupCTDenoiseLib.errors import InputError
from SelfSupCTDenoiseLib.files import dicom_out
from SelfSupCTDenoiseLib.files.dicom_out import (DENOISED_SUFFIX, NOISE_MAP_SUFFIX, choose_rescale,
                                                 read_source_series, series_description, write_dicom_series)

ORIGIN = (-112.5, -80.25, 31.0)
SPACING = (0.7, 0.7, 2.5)
ROWS = COLUMNS = 32
SLICES = 6
#: The acquiring scanner, as a source series names it (General Equipment module).
SCANNER = {"Manufacturer": "ACME", "ManufacturerModelName": "Tomo 64", "SoftwareVersions": "VB42",
           "StationName": "CT01", "DeviceSerialNumber": "SN-123", "InstitutionName": "General Hospital"}


def make_ct_series(folder, hu, direction=(1, 0, 0, 0, 1, 0)):
    """Write (slices, 32, 32) HU as a CT series: int16 stored, intercept -1024, file names shuffled."""
    folder.mkdir()
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    row, col = np.array(direction[:3], float), np.array(direction[3:], float)
    normal = np.cross(row, col)
    for k in np.random.default_rng(0).permutation(len(hu)):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.PatientName, ds.PatientID, ds.PatientSex = "Phantom^Test", "PID-42", "O"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.StudyID = "20240102", "101500", "ACC1", "S1"
        ds.Modality, ds.SeriesNumber, ds.SeriesDescription = "CT", 3, "Abdomen 2.5mm"
        ds.Manufacturer, ds.KVP, ds.ConvolutionKernel = "ACME", "120", "B30f"
        for keyword, value in SCANNER.items():
            setattr(ds, keyword, value)
        ds.PatientPosition, ds.BodyPartExamined, ds.BurnedInAnnotation = "HFS", "ABDOMEN", "NO"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.InstanceNumber = int(k) + 1
        ds.ImagePositionPatient = [float(v) for v in np.array(ORIGIN) + k * SPACING[2] * normal]
        ds.ImageOrientationPatient = [float(v) for v in direction]
        ds.PixelSpacing = [SPACING[1], SPACING[0]]
        ds.SliceThickness = SPACING[2]
        ds.Rows, ds.Columns = ROWS, COLUMNS
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        ds.PixelPaddingValue = -2000
        ds.add_new(0x00291010, "OB", b"private vendor data")
        ds.PixelData = (hu[k] + 1024).astype(np.int16).tobytes()
        ds.save_as(str(folder / f"slice_{k:03d}_{generate_uid()[-6:]}.dcm"), enforce_file_format=True)
    return study, series


def read_series(folder):
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


@pytest.fixture()
def ct_series(tmp_path):
    rng = np.random.default_rng(1)
    hu = np.full((SLICES, ROWS, COLUMNS), -1000, np.int16)
    hu[:, 4:28, 3:29] = rng.normal(40, 25, (SLICES, 24, 26)).round()
    hu[:, 12:16, 12:16] = 1200  # bone: must not be clipped
    source_dir = tmp_path / "ldct"
    study, series = make_ct_series(source_dir, hu)
    return source_dir, study, series, hu


def _float_denoised(image):
    array = sitk.GetArrayFromImage(image).astype(np.float32)
    array = ndimage.gaussian_filter(array, (0, 1, 1)) + np.float32(0.37)  # non-integer HU
    out = sitk.GetImageFromArray(array.astype(np.float32))
    out.CopyInformation(image)
    return out


def _assert_same_geometry(a, b):
    assert a.GetSize() == b.GetSize()
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-4)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=1e-6)


def test_denoised_series_reads_back_with_the_same_geometry_and_values(ct_series, tmp_path):
    source_dir, study, series, hu = ct_series
    image = read_series(source_dir)
    np.testing.assert_allclose(image.GetOrigin(), ORIGIN, atol=1e-4)
    assert np.array_equal(sitk.GetArrayFromImage(image), hu)
    denoised = _float_denoised(image)
    source = read_source_series(source_dir)
    files = write_dicom_series(denoised, source, tmp_path / "out",
                               provenance={"parameters": {"strength": 0.75}, "seed": 0,
                                           "bundle": {"name": "lite", "sha256": "0123456789abcdef" * 4}})
    assert len(files) == SLICES and all(f.exists() for f in files)

    back = read_series(tmp_path / "out")
    _assert_same_geometry(back, image)
    slope, _ = choose_rescale(sitk.GetArrayViewFromImage(denoised))
    error = np.abs(sitk.GetArrayFromImage(back).astype(np.float64) - sitk.GetArrayFromImage(denoised))
    assert error.max() <= slope / 2 + 1e-6 and slope <= 1 / 8  # documented: <= slope/2 <= 0.5 HU

    headers = [pydicom.dcmread(str(f)) for f in files]
    source_sops = {h.SOPInstanceUID for h in source.headers}
    assert len({h.SeriesInstanceUID for h in headers}) == 1 and headers[0].SeriesInstanceUID != series
    assert len({h.SOPInstanceUID for h in headers}) == SLICES and not source_sops & {h.SOPInstanceUID for h in headers}
    for h, src in zip(headers, source.headers):
        assert h.StudyInstanceUID == study and h.PatientID == "PID-42" and str(h.PatientName) == "Phantom^Test"
        assert h.FrameOfReferenceUID == src.FrameOfReferenceUID and h.AccessionNumber == "ACC1"
        assert list(h.ImageType)[:2] == ["DERIVED", "SECONDARY"]
        assert h.SeriesDescription == "Abdomen 2.5mm denoised (research)"
        assert h.SeriesNumber == 1003 and h.Modality == "CT" and h.ConvolutionKernel == "B30f"
        assert "SelfSupCTDenoise" in h.DerivationDescription and "strength 0.75" in h.DerivationDescription
        assert h.SourceImageSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
        np.testing.assert_allclose([float(v) for v in h.ImagePositionPatient],
                                   [float(v) for v in src.ImagePositionPatient], atol=1e-4)
        assert float(h.SliceThickness) == pytest.approx(SPACING[2])
        assert "PixelPaddingValue" not in h and not any(t.is_private for t in h.keys())
        assert h.file_meta.MediaStorageSOPInstanceUID == h.SOPInstanceUID
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ldct", "out"]  # no temporary folder left


def test_integer_output_is_stored_exactly_with_slope_one(ct_series, tmp_path):
    source_dir, _, _, hu = ct_series
    image = read_series(source_dir)
    files = write_dicom_series(image, read_source_series(source_dir), tmp_path / "out")
    header = pydicom.dcmread(str(files[0]))
    assert float(header.RescaleSlope) == 1.0 and float(header.RescaleIntercept) == 0.0
    assert np.array_equal(sitk.GetArrayFromImage(read_series(tmp_path / "out")), hu)  # air and bone kept


def test_noise_map_series_and_oblique_geometry(tmp_path):
    rng = np.random.default_rng(2)
    hu = rng.normal(0, 30, (SLICES, ROWS, COLUMNS)).round().astype(np.int16)
    c, s = np.cos(0.3), np.sin(0.3)
    source_dir = tmp_path / "oblique"
    make_ct_series(source_dir, hu, direction=(c, s, 0, -s, c, 0.0))
    image = read_series(source_dir)
    noise = sitk.GetImageFromArray(rng.normal(0, 20, hu.shape).astype(np.float32))
    noise.CopyInformation(image)
    files = write_dicom_series(noise, read_source_series(source_dir), tmp_path / "noise", suffix=NOISE_MAP_SUFFIX)
    back = read_series(tmp_path / "noise")
    _assert_same_geometry(back, image)
    np.testing.assert_allclose(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(noise), atol=0.5)
    header = pydicom.dcmread(str(files[0]))
    assert header.SeriesDescription == "Abdomen 2.5mm noise map (research)" and header.SeriesNumber == 2003
    assert float(header.WindowCenter) == 0.0


def test_refuses_a_non_empty_folder_unless_overwrite_and_never_leaves_half_a_series(ct_series, tmp_path,
                                                                                    monkeypatch):
    source_dir, *_ = ct_series
    image = read_series(source_dir)
    source = read_source_series(source_dir)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    with pytest.raises(InputError):
        write_dicom_series(image, source, out)
    with pytest.raises(InputError):
        write_dicom_series(image, source, source_dir, overwrite=True)  # never the input folder
    write_dicom_series(image, source, out, overwrite=True)
    assert len(list(out.iterdir())) == SLICES and not (out / "keep.txt").exists()

    calls = []

    def failing_save(dataset, path):
        calls.append(path)
        if len(calls) == 3:
            raise OSError("disk full")
        dataset.save_as(str(path), enforce_file_format=True)

    monkeypatch.setattr(dicom_out, "_save", failing_save)
    with pytest.raises(OSError):
        write_dicom_series(image, source, tmp_path / "new")
    assert not (tmp_path / "new").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ldct", "out"]


def test_rescale_rule_and_description_length():
    assert choose_rescale(np.array([-1024.0, 3071.0])) == (1.0, 0.0)
    assert choose_rescale(np.array([-1024.0, 3000.5])) == (1 / 16, 988.0)  # CT range: 1/32 HU error at most
    assert choose_rescale(np.array([-1024.0, 3071.5]))[0] == 1 / 8  # just over 4096 HU
    assert choose_rescale(np.array([-0.25, 0.25]))[0] == 2.0 ** -8
    with pytest.raises(InputError):
        choose_rescale(np.array([-1e6, 1e6]))
    with pytest.raises(InputError):
        choose_rescale(np.array([0.0, np.nan]))
    long = series_description("X" * 80, DENOISED_SUFFIX)
    assert len(long) <= 64 and long.endswith(" " + DENOISED_SUFFIX)
    assert series_description("", DENOISED_SUFFIX) == DENOISED_SUFFIX


# --- the derived series tells who made it and how (issue #12, item 15) ---

PROVENANCE = {"parameters": {"strength": 0.75, "steps": 200}, "seed": 0,
              "bundle": {"name": "lite", "sha256": "0123456789abcdef" * 4}}


def _code(item):
    return item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning


def _as_tuple(code):
    return code.value, code.scheme_designator, code.meaning


def test_derived_series_names_this_software_as_its_equipment_and_the_scanner_as_contributor(ct_series, tmp_path):
    from datetime import datetime, timedelta

    from pydicom.sr.codedict import codes
    from pydicom.valuerep import DT

    from SelfSupCTDenoiseLib import __version__

    source_dir, *_ = ct_series
    source = read_source_series(source_dir)
    image = read_series(source_dir)
    files = write_dicom_series(_float_denoised(image), source, tmp_path / "out", provenance=PROVENANCE)
    noise = write_dicom_series(image, source, tmp_path / "noise", suffix=NOISE_MAP_SUFFIX, provenance=PROVENANCE)
    for path, src in zip(files, source.headers):
        h = pydicom.dcmread(str(path))
        # General Equipment: the equipment that produced these instances is this software
        assert (h.Manufacturer, h.ManufacturerModelName, h.SoftwareVersions) == (
            "SelfSupCTDenoise project", "SelfSupCTDenoise", __version__)
        assert "StationName" not in h and "DeviceSerialNumber" not in h
        scanner, software = h.ContributingEquipmentSequence
        assert _code(scanner.PurposeOfReferenceCodeSequence[0]) == _as_tuple(codes.DCM.AcquisitionEquipment)
        assert {k: str(scanner.get(k)) for k in SCANNER} == SCANNER  # the scanner's identity, moved here
        assert _code(software.PurposeOfReferenceCodeSequence[0]) == _as_tuple(codes.DCM.ProcessingEquipment)
        assert (software.Manufacturer, software.ManufacturerModelName, software.SoftwareVersions) == (
            "SelfSupCTDenoise project", "SelfSupCTDenoise", __version__)
        made = DT(software.ContributionDateTime)
        assert made.tzinfo is not None and abs(made - datetime.now().astimezone()) < timedelta(minutes=5)
        assert software.ContributionDescription == h.DerivationDescription
        for expected in ("strength 0.75", "steps 200", "seed 0", "sha256 0123456789abcdef", __version__):
            assert expected in h.DerivationDescription
        assert [_code(c) for c in h.DerivationCodeSequence] == [_as_tuple(codes.DCM.Smoothing)]
        reference, = h.SourceImageSequence
        assert (reference.ReferencedSOPClassUID, reference.ReferencedSOPInstanceUID) == (
            src.SOPClassUID, src.SOPInstanceUID)
        assert _code(reference.PurposeOfReferenceCodeSequence[0]) == _as_tuple(
            codes.DCM.SourceImageForImageProcessingOperation)
        assert h.BurnedInAnnotation == "NO" and list(h.ImageType)[:2] == ["DERIVED", "SECONDARY"]
    noise_header = pydicom.dcmread(str(noise[0]))
    assert [_code(c) for c in noise_header.DerivationCodeSequence] == [
        _as_tuple(codes.DCM.Smoothing), _as_tuple(codes.DCM.PixelByPixelSubtraction)]


def test_derived_series_reads_back_in_highdicom(ct_series, tmp_path):
    hd = pytest.importorskip("highdicom")
    from pydicom.sr.codedict import codes

    source_dir, *_ = ct_series
    image = read_series(source_dir)
    files = write_dicom_series(_float_denoised(image), read_source_series(source_dir), tmp_path / "out",
                               provenance=PROVENANCE)
    first = hd.imread(str(files[0]))
    assert first.SOPInstanceUID == pydicom.dcmread(str(files[0])).SOPInstanceUID
    # the scanner's item holds what highdicom itself builds from the same values
    built = hd.ContributingEquipment(
        SCANNER["Manufacturer"], codes.DCM.AcquisitionEquipment,
        manufacturer_model_name=SCANNER["ManufacturerModelName"], software_versions=SCANNER["SoftwareVersions"],
        device_serial_number=SCANNER["DeviceSerialNumber"], institution_name=SCANNER["InstitutionName"],
        station_name=SCANNER["StationName"])
    scanner = first.ContributingEquipmentSequence[0]
    assert all(scanner[tag].value == element.value for tag, element in built.items() if tag != 0x0040A170)
    assert _code(scanner.PurposeOfReferenceCodeSequence[0]) == _code(built.PurposeOfReferenceCodeSequence[0])
    volume = hd.get_volume_from_series([pydicom.dcmread(str(f)) for f in files])
    assert volume.spatial_shape == (SLICES, ROWS, COLUMNS)
    np.testing.assert_allclose(volume.spacing, (SPACING[2], SPACING[1], SPACING[0]), atol=1e-4)
    # highdicom stacks the slices in its own order: bring its volume onto the written image's grid
    reference = hd.Volume.from_simpleitk(_float_denoised(image))
    matched = volume.match_geometry(reference, tol=1e-4)
    assert matched.geometry_equal(reference, tol=1e-4)
    np.testing.assert_allclose(matched.array, reference.array, atol=1 / 16)  # stored to slope/2 at most


def test_a_source_that_was_itself_derived_keeps_its_history(ct_series, tmp_path):
    from pydicom.sr.codedict import codes

    source_dir, *_ = ct_series
    source = read_source_series(source_dir)
    earlier = pydicom.Dataset()
    earlier.Manufacturer = "Earlier Tool Inc"
    purpose = pydicom.Dataset()
    purpose.CodeValue, purpose.CodingSchemeDesignator, purpose.CodeMeaning = "109103", "DCM", "Modifying Equipment"
    earlier.PurposeOfReferenceCodeSequence = [purpose]
    for header in source.headers:  # a source made by other processing of the scanner's images
        header.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
        header.ContributingEquipmentSequence = [earlier]
    files = write_dicom_series(read_series(source_dir), source, tmp_path / "out")
    h = pydicom.dcmread(str(files[0]))
    assert [e.Manufacturer for e in h.ContributingEquipmentSequence] == [
        "Earlier Tool Inc", "ACME", "SelfSupCTDenoise project"]
    # the source's equipment made derived images: it processed, it did not acquire
    assert _code(h.ContributingEquipmentSequence[1].PurposeOfReferenceCodeSequence[0]) == _as_tuple(
        codes.DCM.ProcessingEquipment)
    assert len(source.headers[0].ContributingEquipmentSequence) == 1  # the source headers are untouched


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (dicom3tools) is not installed")
def test_dciodvfy_finds_no_error_in_the_derived_series(ct_series, tmp_path):
    source_dir, *_ = ct_series
    source = read_source_series(source_dir)
    for header in source.headers:  # a source lacking an attribute the CT IOD requires (type 2C)
        del header.PatientPosition
    image = read_series(source_dir)
    for folder, suffix in (("out", DENOISED_SUFFIX), ("noise", NOISE_MAP_SUFFIX)):
        files = write_dicom_series(image, source, tmp_path / folder, suffix=suffix, provenance=PROVENANCE)
        report = subprocess.run(["dciodvfy", "-new", str(files[0])], capture_output=True, text=True, timeout=60)
        lines = (report.stdout + report.stderr).splitlines()
        assert lines[0] == "CTImage"  # the IOD it was checked against
        assert [line for line in lines if line.startswith("Error")] == []
