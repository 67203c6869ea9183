"""Real CT as it comes: excerpts of six real series from five TCIA collections (Testing/data/real_ct,
README there) and crops of them are never refused by the CT check."""

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from SelfSupCTDenoiseLib.data.dataset import sample_paths
from SelfSupCTDenoiseLib.engine.ct_array import check_ct_array
from SelfSupCTDenoiseLib.files.volumes import read_volume

REAL_CT = Path(__file__).parent / "data" / "real_ct"
#: name -> what makes it hard for a CT check
SERIES = {
    "lidc_0314": "LIDC-IDRI chest, 1 mm, Philips, kernel D, intercept -1000",
    "rider": "RIDER contrast chest (pulmonary embolism protocol), GE, -2000 padding",
    "cmb_crc": "CMB-CRC upper chest, sharp LUNG kernel, padding 63536 (-2000 signed)",
    "crlm_1004": "Colorectal-Liver-Metastases contrast abdomen, -3024 padding",
    "crlm_1006": "Colorectal-Liver-Metastases derived (secondary) series, abdomen",
    "tcga_thca": "TCGA-THCA low-dose CT of a PET/CT, Siemens B30f",
}
#: (series, what, rows, columns): crops a user may make (heart, lung, spine, liver only).
CROPS = [
    ("lidc_0314", "heart", (170, 266), (200, 328)),
    ("rider", "heart", (100, 196), (230, 358)),
    ("tcga_thca", "heart", (190, 286), (200, 328)),
    ("lidc_0314", "lung", (180, 300), (100, 180)),
    ("rider", "lung", (250, 340), (60, 150)),
    ("cmb_crc", "lung", (200, 280), (130, 210)),
    ("lidc_0314", "spine", (290, 370), (210, 300)),
    ("rider", "spine", (240, 320), (200, 290)),
    ("cmb_crc", "spine", (250, 330), (210, 300)),
    ("crlm_1004", "spine", (300, 390), (180, 280)),
    ("tcga_thca", "spine", (320, 400), (200, 290)),
    ("crlm_1004", "liver", (180, 300), (70, 180)),
    ("crlm_1006", "liver", (190, 300), (90, 190)),
]


def real_series(name: str) -> Path:
    return REAL_CT / name


def test_the_excerpts_are_real_ct_series():
    assert sorted(p.name for p in REAL_CT.iterdir() if p.is_dir()) == sorted(SERIES)
    for name in SERIES:
        assert len(list(real_series(name).glob("*.dcm"))) >= 2


@pytest.mark.parametrize("name", sorted(SERIES))
def test_real_series_are_accepted(name):
    image = read_volume(real_series(name))
    array = sitk.GetArrayViewFromImage(image)
    assert image.GetSize()[:2] == (512, 512) and image.GetSize()[2] >= 2
    # read in HU: air inside the field of view near -1000, padding (if any) below -1500
    inside = array[array > -1500]
    assert -1100 < np.percentile(inside, 0.5) < -900, name


@pytest.mark.parametrize("name, what, rows, columns", CROPS, ids=[f"{s}-{w}" for s, w, _, _ in CROPS])
def test_crops_of_real_series_are_accepted(tmp_path, name, what, rows, columns):
    array = sitk.GetArrayFromImage(read_volume(real_series(name)))[:, slice(*rows), slice(*columns)]
    path = tmp_path / f"{name}_{what}.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path), True)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read_volume(path)), array)


def test_the_heart_crop_of_the_shipped_sample_is_accepted():
    """The refusal the issue reported: 8 slices of 96x128 around the contrast-filled heart of the
    shipped CT angiography ("the most frequent value is 512 HU")."""
    image = sitk.ReadImage(str(sample_paths()["ldct"]))
    check_ct_array(sitk.GetArrayViewFromImage(image)[0:8, 8:104, 40:168])
