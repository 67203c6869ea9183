"""Real CT read from pinned git sources: a local clone named by the user, checked against the tree
hash, extracted once into the cache, simulated like any other subject; and the shipped source list's
licences and citations."""

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from SelfSupCTDenoiseLib.data import dataset, sources
from SelfSupCTDenoiseLib.errors import SelfSupCTDenoiseError
from test_io import write_dicom_slices
from test_lowdose import water_phantom

ROOT = Path(__file__).resolve().parents[1]


def _git(repo, *args):
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def git_fixture(tmp_path):
    """A clone holding a 12-slice DICOM CT series in ct/ beside a README, committed; its pinned subject."""
    phantom = water_phantom(size=64, spacing=3.0, slices=12) + np.random.default_rng(0).normal(0, 5, (12, 64, 64))
    image = sitk.GetImageFromArray(np.round(phantom).astype(np.int16))
    image.SetSpacing((3.0, 3.0, 2.0))
    repo = tmp_path / "sources" / "someone+fixture"
    repo.mkdir(parents=True)
    write_dicom_slices(image, repo / "ct")
    (repo / "README.md").write_text("fixture\n")
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "data")
    commit, tree = _git(repo, "rev-parse", "HEAD"), _git(repo, "rev-parse", "HEAD:ct")
    source = sources.GitSource("someone/fixture", commit, "ct", tree, "CC BY 4.0",
                               "Someone. Fixture [Data set]. https://doi.org/10.0000/fixture")
    subject = sources.Subject("fixture", "volume", "water phantom", "train", git=source)
    return subject, phantom, tmp_path


def test_a_pinned_git_folder_is_read_from_a_clone_checked_and_simulated(git_fixture):
    pytest.importorskip("astra")
    pytest.importorskip("bm3d")
    subject, phantom, tmp = git_fixture
    opts = dataset.BuildOptions(out_dir=tmp / "sim", cache_dir=tmp / "cache", source_dir=tmp / "sources",
                                tags=("d25_hann",), max_slices=4, spread=True, clean_protocol=False,
                                subjects=(subject,), seed=1)
    manifest = dataset.build_dataset(opts, log=lambda _: None)
    entry = manifest["subjects"][0]
    assert manifest["splits"]["train"] == ["fixture"]
    assert entry["source"] == f"someone/fixture@{subject.git.commit[:7]}:ct (tree {subject.git.tree[:12]})"
    assert entry["licence"] == "CC BY 4.0" and entry["citation"].endswith("10.0000/fixture")
    # 4 slices spread over the body's 12 (every 3rd), the grid 3x coarser in z, values as stored
    ndct = sitk.ReadImage(str(tmp / "sim" / "fixture" / "ndct.nrrd"))
    assert ndct.GetSize() == (64, 64, 4) and ndct.GetSpacing() == pytest.approx((3.0, 3.0, 6.0))
    expected = np.maximum(np.round(phantom), sources.HU_FLOOR)[0:12:3]
    np.testing.assert_array_equal(sitk.GetArrayFromImage(ndct), expected)
    # extracted once: later builds read the cache, not the clone
    extracted = tmp / "cache" / "files" / "fixture"
    assert sorted(p.name for p in extracted.iterdir()) == [f"{z:03d}.dcm" for z in range(12)]
    assert sources.fetch_subject(subject, tmp / "cache", source_dir=tmp / "nowhere") == extracted


def test_a_git_source_that_is_not_the_pinned_data_or_has_no_clone_is_refused_saying_how(git_fixture):
    subject, _, tmp = git_fixture
    wrong = sources.Subject("fixture", "volume", "", "train",
                            git=sources.GitSource(*[getattr(subject.git, f) for f in ("repository", "commit", "path")],
                                                  "0" * 40, "CC BY 4.0", ""))
    with pytest.raises(SelfSupCTDenoiseError, match=r"has tree [0-9a-f]{12}, not the pinned 000000000000"):
        sources.fetch_subject(wrong, tmp / "cache", source_dir=tmp / "sources")
    assert not (tmp / "cache" / "files" / "fixture").exists()
    with pytest.raises(SelfSupCTDenoiseError, match=r"--source-dir .*git clone https://github.com/someone/fixture"):
        sources.fetch_subject(subject, tmp / "cache", source_dir=None)
    with pytest.raises(SelfSupCTDenoiseError, match=r"No clone of someone/fixture in .*nowhere"):
        sources.fetch_subject(subject, tmp / "cache", source_dir=tmp / "nowhere")


def test_the_git_sources_are_pinned_licence_clean_and_cited_in_notice_and_data_md():
    notice = (ROOT / "NOTICE").read_text(encoding="utf-8")
    data_md = (ROOT / "docs" / "DATA.md").read_text(encoding="utf-8")
    git_subjects = [s for s in sources.SUBJECTS if s.git]
    assert len({s.git.repository for s in git_subjects}) >= 4 and len(git_subjects) >= 6
    for subject in git_subjects:
        git = subject.git
        assert re.fullmatch(r"[0-9a-f]{40}", git.commit) and re.fullmatch(r"[0-9a-f]{40}", git.tree)
        assert git.licence in ("CC BY 3.0", "CC BY 4.0"), subject.key
        doi = re.search(r"https://doi.org/(10\.7937/\S+)", git.citation).group(1)
        assert "The Cancer Imaging Archive" in git.citation
        assert doi.upper() in notice.upper() and doi.upper() in data_md.upper(), subject.key
        assert git.commit in data_md and git.tree in data_md, subject.key
    assert "https://doi.org/10.1007/s10278-013-9622-7" in notice  # TCIA itself


def test_spread_slices_span_the_body_on_a_regular_coarser_grid():
    volume = np.full((100, 16, 16), -1000, np.int16)
    volume[20:80, 4:12, 4:12] = 40
    image = sitk.GetImageFromArray(volume)
    image.SetSpacing((1.0, 1.0, 1.0))
    spread = dataset.select_slices(image, 10, spread=True)
    slab = dataset.select_slices(image, 10)
    assert spread.GetSize()[2] == slab.GetSize()[2] == 10
    assert spread.GetSpacing()[2] == 6.0 and slab.GetSpacing()[2] == 1.0
    z = [spread.TransformIndexToPhysicalPoint((0, 0, k))[2] for k in (0, 9)]
    assert 20 <= z[0] < 26 and 74 <= z[1] < 80     # first and last within the body's extent


def test_pretraining_reads_the_training_subjects_of_several_simulated_folders(tmp_path):
    """The old subjects' folder and the git subjects' folder train one prior together."""
    import argparse

    from SelfSupCTDenoiseLib.commands import pretrain
    from SelfSupCTDenoiseLib.errors import InputError
    from SelfSupCTDenoiseLib.files.volumes import write_volume

    tags = ["d25_hann", "d50_hann"]
    ct = np.random.default_rng(0).normal(40, 20, (2, 16, 16)).astype(np.int16)
    ct[:, :, :4] = -1000       # air beside soft tissue: the CT check passes
    for folder, keys in (("a", ("old",)), ("b", ("new1", "new2", "held"))):
        subjects = []
        for key in keys:
            (tmp_path / folder / key).mkdir(parents=True)
            for name in ["ndct"] + [f"ldct_{t}" for t in tags]:
                write_volume(sitk.GetImageFromArray(ct), tmp_path / folder / key / f"{name}.nrrd")
            subjects.append({"key": key, "split": "validation" if key == "held" else "train", "licence": "CC BY 4.0"})
        (tmp_path / folder / "manifest.json").write_text(json.dumps({"subjects": subjects}))
    args = argparse.Namespace(pair=[], dataset=[tmp_path / "a", tmp_path / "b"], tag=tags, subjects=None)
    names = [s.name for s in pretrain.subjects_from_args(args)]
    assert names == ["old@d25_hann", "old@d50_hann", "new1@d25_hann", "new1@d50_hann", "new2@d25_hann", "new2@d50_hann"]
    args.subjects = ["new2", "held"]
    with pytest.raises(InputError, match="Not training subjects of .*: held"):
        pretrain.subjects_from_args(args)
