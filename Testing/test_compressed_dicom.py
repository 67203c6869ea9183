"""Compressed and multi-frame DICOM: real slices (Testing/data/real_ct) re-encoded at test time in
JPEG Lossless, JPEG-LS, JPEG 2000 and RLE are read as the original, and `--dicom-out` from each real
series and each compressed variant is a valid derived series (dciodvfy: no errors); an Enhanced CT
object and pixel data SimpleITK's GDCM cannot decode are refused, naming what to do."""

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from SelfSupCTDenoiseLib.errors import InputError
from SelfSupCTDenoiseLib.files.dicom_out import read_source_series, write_dicom_series
from SelfSupCTDenoiseLib.files.volumes import read_volume

pydicom = pytest.importorskip("pydicom")
from pydicom.uid import JPEG2000Lossless, JPEGLosslessSV1, JPEGLSLossless, RLELossless  # noqa: E402

REAL_CT = Path(__file__).parent / "data" / "real_ct"
SOURCE = REAL_CT / "tcga_thca"
SYNTAXES = {"jpeg-lossless": JPEGLosslessSV1, "jpeg-ls": JPEGLSLossless, "jpeg2000": JPEG2000Lossless,
            "rle": RLELossless}


def _gdcm_jpeg_lossless(ds) -> bytes:
    """The slice's pixels as GDCM (in SimpleITK) encodes them in JPEG Lossless SV1 (no Python encoder
    writes that syntax): the encapsulated pixel data of the file it writes."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        writer = sitk.ImageFileWriter()
        writer.SetImageIO("GDCMImageIO")
        writer.SetUseCompression(True)
        writer.SetCompressor("JPEG")
        writer.SetFileName(f"{folder}/slice.dcm")
        writer.Execute(sitk.GetImageFromArray(ds.pixel_array[None]))
        encoded = pydicom.dcmread(f"{folder}/slice.dcm")
        assert encoded.file_meta.TransferSyntaxUID == JPEGLosslessSV1
        return encoded.PixelData


def compressed(name: str, folder: Path) -> Path:
    """The TCGA-THCA excerpt with its pixel data re-encoded in `SYNTAXES[name]` (lossless), headers as they were."""
    folder.mkdir()
    for path in sorted(SOURCE.glob("*.dcm")):
        ds = pydicom.dcmread(path)
        if SYNTAXES[name] == JPEGLosslessSV1:
            ds.PixelData = _gdcm_jpeg_lossless(ds)
            ds["PixelData"].VR, ds["PixelData"].is_undefined_length = "OB", True
            ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
        else:
            ds.compress(SYNTAXES[name])  # pydicom's RLE; pyjpegls; pylibjpeg-openjpeg (the test extra)
        ds.save_as(folder / path.name)
    return folder


@pytest.mark.parametrize("name", sorted(SYNTAXES))
def test_compressed_series_read_as_the_original(tmp_path, name):
    folder = compressed(name, tmp_path / name)
    assert pydicom.dcmread(next(folder.iterdir())).file_meta.TransferSyntaxUID == SYNTAXES[name]
    original, image = read_volume(SOURCE), read_volume(folder)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(original))
    assert (image.GetOrigin(), image.GetSpacing(), image.GetDirection()) == (
        original.GetOrigin(), original.GetSpacing(), original.GetDirection())


def _dciodvfy_errors(path: Path):
    report = subprocess.run(["dciodvfy", "-new", str(path)], capture_output=True, text=True, timeout=60)
    lines = (report.stdout + report.stderr).splitlines()
    assert "CTImage" in lines  # the IOD it was checked against
    return [line for line in lines if line.startswith("Error")]


SOURCES = sorted(p.name for p in REAL_CT.iterdir() if p.is_dir()) + [f"tcga_thca-{n}" for n in sorted(SYNTAXES)]


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (dicom3tools) is not installed")
@pytest.mark.parametrize("name", SOURCES)
def test_dicom_out_from_every_real_series_is_valid(tmp_path, name):
    series, _, syntax = name.partition("-")
    folder = compressed(syntax, tmp_path / syntax) if syntax else REAL_CT / series
    image = read_volume(folder)
    files = write_dicom_series(image, read_source_series(folder), tmp_path / "out")
    assert _dciodvfy_errors(files[0]) == []
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read_volume(tmp_path / "out")), sitk.GetArrayFromImage(image))
    source, written = pydicom.dcmread(next(folder.glob("*.dcm")), stop_before_pixels=True), pydicom.dcmread(files[0])
    for keyword in ("PatientID", "StudyInstanceUID", "FrameOfReferenceUID", "ConvolutionKernel", "KVP"):
        assert written.get(keyword) == source.get(keyword), keyword  # what the source had is kept


def test_an_enhanced_ct_object_is_refused_with_how_to_convert_it(tmp_path):
    from highdicom.legacy import LegacyConvertedEnhancedCTImage
    from highdicom.uid import UID

    slices = [pydicom.dcmread(p) for p in sorted(SOURCE.glob("*.dcm"))]
    folder = tmp_path / "enhanced"
    folder.mkdir()
    with pytest.warns(UserWarning):  # highdicom on TCIA's one-component patient name
        LegacyConvertedEnhancedCTImage(slices, series_instance_uid=UID(), series_number=5, sop_instance_uid=UID(),
                                       instance_number=1).save_as(folder / "enhanced.dcm")
    with pytest.raises(InputError, match=r"multi-frame \(Enhanced CT\) object of 3 frames.*emf2sf.*dcm2niix"):
        read_volume(folder)


def test_pixel_data_gdcm_cannot_decode_are_refused_naming_the_transfer_syntax(tmp_path):
    folder = compressed("jpeg2000", tmp_path / "j2k")
    for path in folder.iterdir():  # labelled as video: a syntax GDCM has no decoder for
        ds = pydicom.dcmread(path)
        ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"
        ds.save_as(path)
    with pytest.raises(InputError, match=r"compressed as MPEG2 video \(1\.2\.840\.10008\.1\.2\.4\.100\).*Decompress"):
        read_volume(folder)
