"""The QC page of a cohort: OUTDIR/report.html, one static, self-contained file (no server, no network,
no external resources: styles, script and thumbnails are inside it).

A row per output of the folder (this run's volumes, failed ones included, and every output that
earlier runs or the serial batch left there with a sidecar, marked "earlier"), each with the settings
its sidecar records and whether it was made in this run: a thumbnail strip of the middle slice (LDCT |
denoised | noise map, soft-tissue window; a click opens the full-size strip, OUTDIR/qc/<output>.png,
by a URL-encoded link), the input's estimated noise and texture, noise SD in uniform soft tissue
before and after, mean-HU shift, method-noise score and reading, whether the guard fell back, time
and device. Flagged rows come first; a click on a column
heading sorts by it (again: the other way); `report.html#sort=-method_noise` opens it so sorted.
The numbers are those of cohort/qc.py (the engine's trust measures).
"""

from __future__ import annotations

import base64
import html
import os
import subprocess
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..engine.config import AdaptConfig
from ..errors import InputError
from ..files.names import url_path
from ..files.provenance_io import SIDECAR_SUFFIX, read_sidecar
from ..quality.method_noise import METHOD_NOISE_BORDERLINE, METHOD_NOISE_THRESHOLD
from .qc import flags as qc_flags
from .qc import qc_paths, read_qc, write_atomic

REPORT_NAME = "report.html"

#: (key, heading, sort type) of each column, in order.
COLUMNS = (
    ("volume", "Volume", "text"),
    ("flags", "Flags", "num"),
    ("images", "LDCT | denoised | noise map", None),
    ("noise_estimate", "Input noise (est.)", "num"),
    ("sd_input", "Noise SD in", "num"),
    ("sd_output", "Noise SD out", "num"),
    ("hu_shift", "Mean-HU shift", "num"),
    ("method_noise", "Method noise", "num"),
    ("guard", "Guard", "num"),
    ("time", "Time", "num"),
    ("device", "Device", "text"),
    ("settings", "Settings (sidecar)", "text"),
)
#: Status of an output in OUTDIR that this run did not touch (not among its inputs).
EARLIER = "earlier"

_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:16px;color:#222}
h1{font-size:20px;margin:0 0 4px}
.summary{margin:0 0 8px}.legend{color:#555;font-size:12px;max-width:1100px}
table{border-collapse:collapse;margin-top:8px}
th,td{border-bottom:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:middle}
th{background:#f4f4f4;position:sticky;top:0}
th[data-key]{cursor:pointer;user-select:none}
th[aria-sort=ascending]::after{content:" \\25B2"}th[aria-sort=descending]::after{content:" \\25BC"}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr.flagged td:first-child{border-left:4px solid #c62828}
tr.noted td:first-child{border-left:4px solid #f9a825}
.flag{color:#b71c1c;display:block}.note{color:#8d6e00;display:block}.ok{color:#2e7d32}
.sub{color:#777;font-size:12px;display:block}
img{display:block;image-rendering:auto}
"""

_SCRIPT = """
(function(){
  var table=document.getElementById('volumes'), body=table.tBodies[0];
  function value(row, col, type){
    var text=row.cells[col].getAttribute('data-sort');
    if(type==='num'){var x=parseFloat(text); return isNaN(x)?null:x;}
    return (text||'').toLowerCase();
  }
  function sortBy(key, descending){
    var th=table.querySelector('th[data-key="'+key+'"]');
    if(!th) return;
    var col=th.cellIndex, type=th.getAttribute('data-type'), rows=Array.prototype.slice.call(body.rows);
    rows.sort(function(a,b){
      var x=value(a,col,type), y=value(b,col,type);
      if(x===null||y===null) return x===y?0:(x===null?1:-1);  /* not measured: always last */
      var c=x<y?-1:(x>y?1:0); return descending?-c:c;
    });
    rows.forEach(function(r){body.appendChild(r);});
    Array.prototype.forEach.call(table.querySelectorAll('th'),function(h){h.removeAttribute('aria-sort');});
    th.setAttribute('aria-sort',descending?'descending':'ascending');
    table.setAttribute('data-sorted-by',(descending?'-':'')+key);
  }
  Array.prototype.forEach.call(table.querySelectorAll('th[data-key]'),function(th){
    th.addEventListener('click',function(){
      var key=th.getAttribute('data-key');
      sortBy(key, table.getAttribute('data-sorted-by')===key);
    });
  });
  var m=/sort=(-?)([A-Za-z_]+)/.exec(location.hash);
  if(m) sortBy(m[2], m[1]==='-');
})();
"""


def _cell(content: str, sort: Any = None, numeric: bool = False) -> str:
    attributes = "" if sort is None else f' data-sort="{html.escape(str(sort))}"'
    return f"<td{' class=num' if numeric else ''}{attributes}>{content}</td>"


def _number(value: Optional[float], unit: str = "", digits: int = 1, signed: bool = False) -> str:
    if value is None:
        return '<span class="sub">not measured</span>'
    return f"{value:{'+' if signed else ''}.{digits}f}{unit}"


def _thumbnail(row: Dict[str, Any], out_dir: Path) -> str:
    qc = row.get("qc")
    if qc is None:
        return ""
    paths = qc_paths(out_dir / qc["output"])
    try:
        data = base64.b64encode(paths["thumb"].read_bytes()).decode("ascii")
    except OSError:
        return '<span class="sub">image missing</span>'
    link = html.escape(url_path(os.path.relpath(paths["full"], out_dir).replace(os.sep, "/")))
    alt = html.escape(f"LDCT | denoised | noise map, middle slice of {row['input']}")
    return (f'<a href="{link}" target="_blank" title="full size"><img src="data:image/png;base64,{data}" '
            f'alt="{alt}"></a>')


def _flags(row: Dict[str, Any]) -> List[Tuple[str, str]]:
    if row.get("status") == EARLIER and row.get("qc") is None:
        return [("note", "no QC: none was made for this output (a cohort run on its input makes it)")]
    return qc_flags(row.get("qc"), row.get("error"), row.get("qc_error"))


def settings_text(record: Dict[str, Any]) -> str:
    """The settings an output was made with, from its sidecar: steps and strength, then every other
    parameter that is not the default (as a manifest row or the command line set them), and the bundle."""
    parameters, default = record.get("parameters") or {}, AdaptConfig().to_dict()
    parts = [f"steps {parameters.get('steps')}", f"strength {parameters.get('strength')}"]
    parts += [f"{key.replace('_', '-')} {value}" for key, value in sorted(parameters.items())
              if key not in ("steps", "strength", "threads") and value != default.get(key, value)]
    bundle = (record.get("bundle") or {}).get("name")
    return ", ".join(parts + ([f"bundle {bundle}"] if bundle else []))


def outputs_in(out_dir: Path) -> Dict[str, Dict[str, Any]]:
    """Every output in `out_dir` with a readable sidecar (it is complete): output name -> sidecar record."""
    found = {}
    for sidecar in sorted(Path(out_dir).glob(f"*{SIDECAR_SUFFIX}")):
        target = sidecar.with_name(sidecar.name[: -len(SIDECAR_SUFFIX)])
        if sidecar.name.startswith(".") or not target.exists():
            continue
        try:
            record = read_sidecar(sidecar)
        except InputError:
            continue  # damaged, or another tool's JSON: not an output of ours
        if isinstance(record.get("parameters"), dict):
            found[target.name] = record
    return found


def folder_rows(out_dir: Path, rows: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """The report covers the folder: this run's `rows`, each complete one with the settings of its
    sidecar, and a row (status "earlier") for every other output in `out_dir` with a sidecar, with
    its own settings and QC (if any was made)."""
    records = outputs_in(out_dir)
    covered = [{**row, "settings": settings_text(records[row["output"]])
                if row.get("status") in ("done", "skipped") and row.get("output") in records else None}
               for row in rows]
    listed = {row.get("output") for row in rows}
    covered += [{"input": record.get("input") or name, "output": name, "status": EARLIER, "error": None,
                 "qc": read_qc(Path(out_dir) / name), "settings": settings_text(record)}
                for name, record in records.items() if name not in listed]
    return covered


def _row(row: Dict[str, Any], out_dir: Path) -> str:
    qc, found = row.get("qc"), _flags(row)
    n_flags = sum(level == "flag" for level, _ in found)
    n_notes = len(found) - n_flags
    status = html.escape(row.get("status", ""))
    flag_html = "".join(f'<span class="{level}">{html.escape(text)}</span>' for level, text in found) \
        or '<span class="ok">none</span>'
    made = " &middot; made in this run" if row.get("status") == "done" else ""
    cells = [_cell(f"{html.escape(row['input'])}<span class=sub>{status}{made}"
                   f"{' &middot; ' + html.escape(row['output']) if row.get('output') else ''}</span>",
                   row["input"]),
             _cell(flag_html, n_flags * 1000 + n_notes),
             _cell(_thumbnail(row, out_dir))]
    if qc is None:
        cells += [_cell("", None, True) for _ in COLUMNS[3:-3]]
        cells += [_cell("", None, True), _cell(html.escape(row.get("host") or ""), row.get("host") or "")]
    else:
        method = qc.get("method_noise_score")
        cells += [
            _cell(f"{_number(qc.get('estimated_noise_hu'), ' HU', 0)}<span class=sub>"
                  f"{'sharp' if (qc.get('estimated_noise_sharpness') or 0) >= 0.5 else 'smooth'} texture</span>"
                  if qc.get("estimated_noise_hu") is not None else _number(None), qc.get("estimated_noise_hu"), True),
            _cell(_number(qc.get("noise_sd_input_hu"), " HU"), qc.get("noise_sd_input_hu"), True),
            _cell(_number(qc.get("noise_sd_output_hu"), " HU"), qc.get("noise_sd_output_hu"), True),
            _cell(_number(qc.get("hu_shift_hu"), " HU", 2, True), qc.get("hu_shift_hu"), True),
            _cell(f"{_number(method, '', 2, True)}<span class=sub>{html.escape(qc.get('method_noise_level', ''))}"
                  "</span>", method, True),
            _cell("fell back" if qc.get("guard_fell_back") else "adapted", int(bool(qc.get("guard_fell_back"))), True),
            _cell(_number(qc.get("elapsed_s"), " s"), qc.get("elapsed_s"), True),
            _cell(html.escape(qc.get("device") or ""), qc.get("device") or ""),
        ]
    cells.append(_cell(html.escape(row.get("settings") or ""), row.get("settings") or ""))
    css = "flagged" if n_flags else ("noted" if n_notes else "")
    return (f'<tr{" class=" + css if css else ""} data-volume="{html.escape(row["input"])}" '
            f'data-flags="{n_flags}">' + "".join(cells) + "</tr>")


def _order(rows: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Flagged rows first (most flags first), then rows with notes, then by name."""
    def key(row):
        found = _flags(row)
        return (-sum(level == "flag" for level, _ in found), -len(found), row["input"])

    return sorted(rows, key=key)


def write_report(out_dir: Path, rows: Sequence[Dict[str, Any]], title: str = "Cohort QC",
                 details: Optional[Dict[str, Any]] = None) -> Path:
    """Write OUTDIR/report.html. `rows`: per volume {"input", "output", "status" (done: made in this
    run), "error" (None if none), "qc" (cohort.qc record or None), "qc_error" (why its QC could not be
    made), "host", "settings"} (folder_rows: every output of the folder); `details`: shown under the
    title."""
    out_dir = Path(out_dir)
    ordered = _order(rows)
    flagged = sum(any(level == "flag" for level, _ in _flags(r)) for r in ordered)
    counts: Dict[str, int] = {}
    for row in ordered:
        counts[row.get("status", "")] = counts.get(row.get("status", ""), 0) + 1
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    summary = (f"{len(ordered)} volumes: " + ", ".join(f"{n} {html.escape(s)}" for s, n in sorted(counts.items()))
               + f"; <b id=flagged-count>{flagged}</b> flagged; {counts.get('done', 0)} made in this run. "
               f"Written {when} in {html.escape(str(out_dir))}.")
    extra = "".join(f"<span class=sub>{html.escape(str(k))}: {html.escape(str(v))}</span>"
                    for k, v in (details or {}).items())
    legend = (
        "Noise SD: mean SD over uniform soft-tissue regions found on the input (in: LDCT, out: denoised). "
        "Mean-HU shift: denoised minus input over uniform soft tissue (flagged outside the tolerance, 2 HU). "
        f"Method noise: does the noise map hold anatomy? &ge; {METHOD_NOISE_THRESHOLD} flagged (detail removed), "
        f"&ge; {METHOD_NOISE_BORDERLINE} borderline. Guard: 'fell back' = the pretrained model's result was kept. "
        "Thumbnails: middle slice, soft-tissue window [-160, 240] HU; noise map blue -100 to red +100 HU; "
        "click for full size (files in qc/ beside this page). Click a heading to sort. "
        "Research use only, not for diagnosis.")
    headings = "".join(f'<th data-key="{key}" data-type="{kind}">{html.escape(text)}</th>' if kind
                       else f"<th>{html.escape(text)}</th>" for key, text, kind in COLUMNS)
    page = (f"<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8><title>{html.escape(title)}</title>"
            f"<meta name=viewport content='width=device-width'><style>{_STYLE}</style></head><body>"
            f"<h1>{html.escape(title)}</h1><p class=summary>{summary}{extra}</p><p class=legend>{legend}</p>"
            f"<table id=volumes data-sorted-by='-flags'><thead><tr>{headings}</tr></thead><tbody>"
            + "\n".join(_row(row, out_dir) for row in ordered)
            + f"</tbody></table><script>{_SCRIPT}</script></body></html>\n")
    path = out_dir / REPORT_NAME
    write_atomic(path, lambda temp: temp.write_text(page, encoding="utf-8"))
    return path


#: Flags for Chromium headless as root in a container, with no network use of its own.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--hide-scrollbars")


def headless_chromium(page: Path, *, screenshot: Optional[Path] = None, fragment: str = "",
                      window: str = "1400,900", browser: str = "chromium", timeout_s: float = 60.0) -> str:
    """Open `page` (a local file) in headless Chromium: returns the DOM after its script ran, or takes
    a screenshot (PNG) when `screenshot` is given. For tests and the docs' picture."""
    url = Path(page).resolve().as_uri() + (f"#{fragment}" if fragment else "")
    with tempfile.TemporaryDirectory() as profile:
        action = [f"--screenshot={screenshot}", f"--window-size={window}"] if screenshot else ["--dump-dom"]
        done = subprocess.run([browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *action, url],
                              capture_output=True, text=True, timeout=timeout_s, check=True)
    return done.stdout
