"""A bad name fails alone (issue 27): a name too long for its outputs fails that volume alone, before
any work; control characters in names reach the terminal escaped; the report's links point to the
files they name (URL-encoded); a QC image that could not be made is reported as a QC failure of a
complete output. Real NRRD files (the project's writer), the real batch, the real task and report
builder; the cohort's side on a real Ray is in test_cohort.py."""

import html
import re
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import SimpleITK as sitk

from SelfSupCTDenoiseLib.cli import main
from SelfSupCTDenoiseLib.data.phantom import noisy_pair
from SelfSupCTDenoiseLib.files.volumes import write_volume
from test_files_faults import QUICK, one_error_line


def save(path: Path, seed: int = 0) -> Path:
    """A small CT volume written by the project's writer (atomic, read back and verified)."""
    image = sitk.GetImageFromArray(np.round(noisy_pair(4, 48, 30.0, seed=seed)[0]).astype(np.int16))
    image.SetSpacing((2.0, 2.0, 3.0))  # 15 mm uniform-tissue boxes fit: the QC measures something
    write_volume(image, path)
    return path


def _batch(tiny_bundle, *paths):
    return ["denoise", *map(str, paths), "--bundle", str(tiny_bundle.path), *QUICK]


def test_a_name_too_long_for_its_outputs_fails_alone_before_any_work(tiny_bundle, tmp_path, capsys):
    # before: the 250-character name stopped the whole batch before any work ("File name too long",
    # exit 2, nothing done); the 245-character one failed only after it had been denoised
    folder = tmp_path / "in"
    folder.mkdir()
    save(folder / "ok.nrrd")
    output_too_long = save(folder / ("a" * 245 + ".nrrd"))  # a_..._denoised.nrrd: 259 bytes
    sidecar_too_long = save(folder / ("b" * 240 + ".nrrd"))  # b_..._denoised.nrrd fits (254), its .json not
    out = tmp_path / "out"
    assert main(_batch(tiny_bundle, folder, out)) == 1
    captured = capsys.readouterr()
    failures = [line for line in captured.err.splitlines() if "failed:" in line]
    assert len(failures) == 2 and all("would be 259 bytes long, more than the 255" in f for f in failures), failures
    assert "Cannot write" not in captured.err  # refused before its work, not after
    assert sorted(p.name for p in out.iterdir()) == ["ok_denoised.nrrd", "ok_denoised.nrrd.json"]
    table = captured.out.splitlines()
    assert table[-1] == "1 done, 2 failed"
    assert sum("FAILED" in line for line in table) == 2 and any("ok.nrrd" in line and " ok in " in line
                                                                 for line in table)
    assert output_too_long.is_file() and sidecar_too_long.is_file()
    # one volume alone: the same reason, in one line, exit 2
    assert main(_batch(tiny_bundle, folder / "ok.nrrd", out / ("c" * 252 + ".nrrd"))) == 2
    assert "would be 257 bytes long" in one_error_line(capsys.readouterr().err)


def test_control_characters_in_names_reach_the_terminal_escaped(tiny_bundle, tmp_path, capsys):
    # before: the escape sequence, the carriage return and the newline were printed as they are
    folder = tmp_path / "in"
    folder.mkdir()
    save(folder / "red\x1b[31mcase.nrrd")
    (folder / "cr\rnl\n.nrrd").write_text("not a volume")
    assert main(_batch(tiny_bundle, folder, tmp_path / "out")) == 1
    captured = capsys.readouterr()
    printed = captured.out + captured.err
    assert "\x1b" not in printed and "\r" not in printed
    assert "red\\x1b[31mcase.nrrd" in captured.out and "cr\\rnl\\n.nrrd" in captured.out
    assert re.search(r"cr\\rnl\\n\.nrrd: failed: Cannot read .*cr\\rnl\\n\.nrrd", captured.err)
    assert len(captured.out.splitlines()) == 4  # heading, two volumes, counts: no name broke a line
    assert (tmp_path / "out" / "red\x1b[31mcase_denoised.nrrd").is_file()  # the file keeps its real name
    assert main(_batch(tiny_bundle, tmp_path / "gone\x1b[2J\n.nrrd", tmp_path / "o.nrrd")) == 2
    assert "gone\\x1b[2J\\n.nrrd" in one_error_line(capsys.readouterr().err)


def test_report_links_are_url_encoded_and_html_escaped(tiny_bundle, tmp_path):
    # before: href="qc/case#1_denoised.nrrd.png" (a fragment) and "qc/p%41..." (the file pA...)
    from SelfSupCTDenoiseLib.cohort.qc import qc_paths, read_qc, write_qc
    from SelfSupCTDenoiseLib.cohort.report import write_report

    folder = tmp_path / "in"
    folder.mkdir()
    names = ["case#1.nrrd", "p%41.nrrd", "with space&<b>.nrrd"]
    for seed, name in enumerate(names):
        save(folder / name, seed)
    out = tmp_path / "out"
    assert main(_batch(tiny_bundle, folder, out)) == 0
    rows = []
    for name in names:
        target = out / name.replace(".nrrd", "_denoised.nrrd")
        write_qc(folder / name, target)  # on the batch's real outputs and sidecars
        rows.append({"input": name, "output": target.name, "status": "done", "error": None, "qc": read_qc(target)})
    page = write_report(out, rows).read_text(encoding="utf-8")
    links = [html.unescape(link) for link in re.findall(r'<a href="([^"]+)"', page)]
    assert sorted(out / unquote(link) for link in links) == sorted(qc_paths(out / r["output"])["full"] for r in rows)
    assert not any(set(link) & set("# <>&") for link in links) and any("/p%2541_" in link for link in links)
    assert "with space&amp;&lt;b&gt;.nrrd" in page and "<b>" not in page.replace("<b id=flagged-count>", "")


def test_a_qc_image_that_failed_is_a_qc_failure_of_a_complete_output(tiny_bundle, tmp_path):
    # before: "no QC: the output is not complete", for outputs that were complete
    import SelfSupCTDenoiseLib.cohort.task as task
    from SelfSupCTDenoiseLib.cohort.inputs import read_cohort
    from SelfSupCTDenoiseLib.cohort.report import write_report
    from SelfSupCTDenoiseLib.commands.cohort import report_rows
    from SelfSupCTDenoiseLib.commands.denoise import completed_outputs
    from SelfSupCTDenoiseLib.engine.config import AdaptConfig

    folder = tmp_path / "in"
    folder.mkdir()
    long_qc = save(folder / ("q" * 235 + ".nrrd"))  # output 249 bytes, qc/<output>_thumb.png 259
    save(folder / "blocked.nrrd", 1)
    outcomes = {}
    for name, source in (("long", long_qc), ("blocked", folder / "blocked.nrrd")):
        out = tmp_path / name
        out.mkdir()
        if name == "blocked":
            (out / "qc").write_text("a file where the QC folder goes")
        volume = read_cohort([source], out, AdaptConfig(steps=0, threads=1))[0]
        summary = task.process_volume(task.volume_spec(volume, "run1", tiny_bundle.path, None, dicom_out=False,
                                                       force=False, denoise=True))
        assert summary["status"] == "done", summary
        job = (volume.source, volume.target, volume.noise_map, volume.config)
        assert completed_outputs([job], tiny_bundle.path)[0] is not None  # the output counts as complete
        rows = report_rows([volume], [None], {volume.index: {**summary, "attempts": 1}})
        page = write_report(out, rows).read_text(encoding="utf-8")
        shown = re.findall(r'<span class="(flag|note)">(.*?)</span>', page)
        assert len(shown) == 1 and shown[0][0] == "flag" and shown[0][1].startswith("QC image failed: "), shown
        assert "not complete" not in page and re.search(r"<span class=sub>done", page)
        outcomes[name] = html.unescape(shown[0][1])
    assert "would be 259 bytes long" in outcomes["long"]
    assert "qc" in outcomes["blocked"] and "\n" not in outcomes["blocked"]
