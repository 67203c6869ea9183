"""Every number README.md quotes from a committed result file matches that file (scripts/doc_numbers.py):
the generated blocks are up to date, each quoted sentence renders from its file, the bundle a result is
attributed to is the one that made it, and no dB or ratio is quoted from nowhere."""

import importlib.util
import json
import re
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("doc_numbers", ROOT / "scripts" / "doc_numbers.py")
doc_numbers = sys.modules[_spec.name] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(doc_numbers)


def test_every_number_quoted_in_the_docs_matches_its_result_file():
    assert doc_numbers.check() == []


@pytest.fixture
def checkout(tmp_path, monkeypatch):
    """A copy of the documents, result files and shipped manifests, for the check to read instead."""
    shutil.copy(ROOT / "README.md", tmp_path / "README.md")
    shutil.copytree(ROOT / "docs", tmp_path / "docs", ignore=shutil.ignore_patterns("*.png"))
    for manifest in (ROOT / "SelfSupCTDenoise" / "Resources" / "Models").glob("*/manifest.json"):
        target = tmp_path / manifest.relative_to(ROOT)
        target.parent.mkdir(parents=True)
        shutil.copy(manifest, target)
    monkeypatch.setattr(doc_numbers, "ROOT", tmp_path)
    return tmp_path


def _edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    change(data)
    path.write_text(json.dumps(data), encoding="utf-8")


def test_a_rerun_that_moves_a_number_fails_until_write_puts_it_in_the_text(checkout):
    bench = checkout / doc_numbers.BENCH

    def slower_chest(data):  # the shipped default loses 2 dB on the chest at quarter dose
        row = next(r for r in data["rows"] if r["protocol"] == "clean" and r["method"] == doc_numbers.ADAPTED
                   and r["tag"] == "d25_hann" and r["subject"] == "ts_chest")
        row["psnr_soft"] -= 2.0

    rows = json.loads(bench.read_text(encoding="utf-8"))["rows"]
    chest = {r["method"]: r["psnr_soft"] for r in rows
             if (r["protocol"], r["tag"], r["subject"]) == ("clean", "d25_hann", "ts_chest")}
    _edit_json(bench, slower_chest)
    problems = doc_numbers.check()
    assert any("block when-it-helps differs" in p for p in problems)
    # the mean over BM3D (12 cases) drops by 2/12 dB, and the check quotes both numbers
    mean_line = re.search(r"by ([+−-]\d\.\d\d) dB on the mean", (checkout / "README.md").read_text(encoding="utf-8"))
    before = float(mean_line.group(1).replace("−", "-"))
    after = f"{before - 2.0 / 12:+.2f}".replace("-", "−")
    assert any(f"by {mean_line.group(1)} dB on the mean" in p and f"by {after} dB on the mean" in p
               for p in problems), problems
    readme = (checkout / "README.md").read_text(encoding="utf-8")
    assert doc_numbers.main(["--write"]) == 0
    assert doc_numbers.check() == []
    written = (checkout / "README.md").read_text(encoding="utf-8")
    pretrained, adapted = chest[doc_numbers.PRETRAINED], chest[doc_numbers.ADAPTED] - 2.0
    assert f"| ts_chest | {pretrained:.2f} → {adapted:.2f} ({adapted - pretrained:+.2f})".replace("-", "−") in written
    assert "improved 11 of 12 cases" in written and "improved 12 of 12 cases" in readme
    # the line breaks of the prose are kept: only the numbers changed
    assert written.count("\n") == readme.count("\n")


def test_a_result_called_the_shipped_bundles_must_be_the_shipped_bundles(checkout):
    _edit_json(checkout / doc_numbers.PAPER60,  # documented as an earlier lite's
               lambda data: data["meta"]["bundles"]["n2c"].update(sha256=doc_numbers.manifest_sha("lite")))
    _edit_json(checkout / doc_numbers.LESIONS, lambda data: data["meta"]["bundle"].update(sha256="0" * 64))
    problems = doc_numbers.check()
    assert any(p.startswith(f"{doc_numbers.PAPER60}: its n2c bundle") and "is the shipped `lite`" in p
               for p in problems), problems
    assert any(p.startswith(f"{doc_numbers.LESIONS}: its bundle bundle (000000000000) is not the shipped")
               for p in problems), problems


def test_a_number_quoted_from_no_file_is_found(checkout):
    readme = checkout / "README.md"
    readme.write_text(readme.read_text(encoding="utf-8").replace(
        "## Command line", "Adaptation adds +2.5 dB on any scan.\n\n## Command line"), encoding="utf-8")
    assert [p for p in doc_numbers.check() if "'+2.5 dB'" in p and "is quoted from no result file" in p]


def test_the_demo_printout_in_the_readme_is_the_committed_one(checkout):
    demo = checkout / doc_numbers.DEMO
    text = demo.read_text(encoding="utf-8")
    sd = doc_numbers.demo_rows(text)["adapted (this run)"][3]  # the adapted run's noise SD, as committed
    row = next(line for line in text.splitlines() if line.startswith("adapted (this run)"))
    demo.write_text(text.replace(row, row.replace(f" {sd:.1f} ", f" {sd + 0.4:.1f} ")), encoding="utf-8")
    problems = doc_numbers.check()
    assert any("block demo differs from docs/demo/demo_output.txt" in p for p in problems)
    assert any(f"adaptation leaves {sd:.1f} HU" in p and f"adaptation leaves {sd + 0.4:.1f} HU" in p for p in problems)


def test_the_rows_the_documents_quote_are_rows_of_the_benchmark():
    """The script names rows by their benchmark names: a renamed row must fail here, not pass unread."""
    from SelfSupCTDenoiseLib.bench.benchmark import methods

    names = {m.name for m in methods()}
    quoted = [doc_numbers.LDCT, doc_numbers.PRETRAINED, doc_numbers.BM3D, doc_numbers.ADAPTED, doc_numbers.DIFFUSION,
              doc_numbers.DIFFUSION_2D, doc_numbers.CEILING, doc_numbers.PAPER_RECIPE,
              doc_numbers.PAPER_ADAPTED]
    assert [name for name in quoted if name not in names] == []
