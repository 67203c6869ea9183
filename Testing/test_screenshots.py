"""The screenshots show today's panel and bundle (issue 29): each PNG records in text chunks what it was
made from, and these tests compare that with the tree. Fast: reads files, no Qt, no torch.

When one fails, regenerate the PNG (from the repository root) and commit it:

    python scripts/render_panel.py --worker-python .venv/bin/python  # panel.png; PySide6, and torch for the probe
    PYTHONPATH=SelfSupCTDenoise python scripts/render_views.py   # three-views.png; slicer-core, torch,
                                                                 # matplotlib; a real run: minutes
"""

import hashlib
import json
import struct
import zlib
from pathlib import Path

import pytest

from SelfSupCTDenoiseLib.engine.bundle import MANIFEST, default_bundle_for_device, sha256_file
from SelfSupCTDenoiseLib.engine.config import AdaptConfig

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "Resources" / "Screenshots"
MODULE_DIR = ROOT / "SelfSupCTDenoise"
UI = MODULE_DIR / "Resources" / "UI" / "SelfSupCTDenoise.ui"
SAMPLE_DIR = MODULE_DIR / "Resources" / "Sample"
KEY = "SelfSupCTDenoise."  # prefix of the scripts' chunk keywords


def png_text(path: Path) -> dict:
    """The PNG's tEXt and zTXt chunks as {keyword: text} (Qt compresses long values into zTXt)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    texts, pos = {}, 8
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        pos += 12 + length  # length, type, data, CRC
        if kind not in (b"tEXt", b"zTXt"):
            continue
        keyword, _, value = body.partition(b"\0")
        if kind == b"zTXt":
            value = zlib.decompress(value[1:])  # after the compression-method byte
        texts[keyword.decode("latin-1")] = value.decode("latin-1")
    return texts


def recorded(name: str) -> dict:
    texts = {k[len(KEY):]: v for k, v in png_text(SHOTS / name).items() if k.startswith(KEY)}
    if not texts:
        pytest.fail(f"{name} records nothing it was made from: regenerate it (see this file's docstring)")
    return texts


def test_panel_png_shows_the_current_ui_file_and_defaults():
    shot = recorded("panel.png")
    assert shot["ui_sha256"] == hashlib.sha256(UI.read_bytes()).hexdigest(), (
        "panel.png shows an older SelfSupCTDenoise.ui: run scripts/render_panel.py")
    assert json.loads(shot["engine_defaults"]) == AdaptConfig().to_dict(), (
        "the defaults panel.png shows changed: run scripts/render_panel.py")


def test_three_views_png_shows_the_shipped_bundle_sample_and_defaults():
    shot = recorded("three-views.png")
    bundle = default_bundle_for_device("cpu")  # what the panel's 'auto' runs on a computer without a GPU
    assert (shot["bundle"], shot["bundle_sha256"]) == (bundle.name, sha256_file(bundle / MANIFEST)), (
        "three-views.png was made with another bundle than the shipped one: run scripts/render_views.py")
    assert shot["sample_sha256"] == sha256_file(SAMPLE_DIR / shot["sample"]), (
        "the sample changed since three-views.png was made: run scripts/render_views.py")
    assert json.loads(shot["config"]) == AdaptConfig().to_dict(), (
        "the default settings changed since three-views.png was made: run scripts/render_views.py")
