"""The panel says what it does (issue 29): the tooltips in the .ui file and the module's help text
match the engine's definitions, and every control has a tooltip. Reads the files; no Slicer needed."""

import ast
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from SelfSupCTDenoiseLib.engine.strength import STRENGTH_LEVELS, strength_blend

MODULE_DIR = Path(__file__).resolve().parents[1] / "SelfSupCTDenoise"
UI = MODULE_DIR / "Resources" / "UI" / "SelfSupCTDenoise.ui"
#: Widgets that are read, not used: labels, layout containers, the progress bar.
NOT_CONTROLS = {"QLabel", "QWidget", "QProgressBar", "qMRMLWidget"}
#: Section headers that hold only controls with their own tooltips.
PLAIN_SECTIONS = {"inputsCollapsibleButton", "outputsCollapsibleButton", "advancedCollapsibleButton"}


def tooltips(ui_path=UI):
    """widget name -> (class, tooltip or None)."""
    found = {}
    for widget in ET.parse(ui_path).iter("widget"):
        tip = next((p.find("string").text for p in widget.findall("property") if p.get("name") == "toolTip"), None)
        found[widget.get("name")] = (widget.get("class"), tip)
    return found


def help_text():
    """The module's help text as written (before translation and formatting)."""
    tree = ast.parse((MODULE_DIR / "SelfSupCTDenoise.py").read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and ast.unparse(node.targets[0]) == "self.parent.helpText":
            return node.value.func.value.args[0].value
    raise AssertionError("no help text")


def test_every_control_has_a_tooltip(ui_path=UI):
    missing = [name for name, (kind, tip) in tooltips(ui_path).items()
               if kind not in NOT_CONTROLS and name not in PLAIN_SECTIONS and not (tip or "").strip()]
    assert missing == []


def test_the_strength_tooltip_is_the_engine_s_blend(ui_path=UI):
    """The formula in the tooltip, evaluated, is what engine/strength.py computes; the presets' tooltips
    and the help text name the engine's levels; the old, wrong wording is gone."""
    tips = tooltips(ui_path)
    text = tips["strengthSliderWidget"][1]
    formula = re.search(r"output = (input - strength x \(input - model output\))", text)
    assert formula, text
    rng = np.random.default_rng(0)
    x, f = rng.normal(40, 30, (2, 8, 8)).astype(np.float32), rng.normal(40, 5, (2, 8, 8)).astype(np.float32)
    for s in (0.0, 0.3, 0.75, 1.0):
        told = eval(formula.group(1).replace(" x ", " * ").replace("model output", "f"),
                    {"input": x, "strength": s, "f": f})
        np.testing.assert_allclose(strength_blend(x, f, s), told, atol=1e-4)
    for level, value in STRENGTH_LEVELS.items():
        assert tips[f"strength{level.capitalize()}Button"][1].startswith(f"Strength {value}")
        assert f"{level.capitalize()} {value}" in help_text()
    assert not any("fraction of the estimated noise" in (tip or "").lower() for _, tip in tips.values())


def test_the_help_and_tooltips_say_the_lesion_advice_target_noise_guard_and_teacher():
    tips, text = tooltips(), help_text()
    assert "use <b>Low</b> where lesion HU values matter" in text
    assert "Use Low where lesion HU values matter" in tips["strengthSliderWidget"][1]
    assert "output = input - strength x (input - model output)" in text
    assert "noise SD (HU) to leave in uniform soft tissue" in text
    assert "uniform soft tissue" in tips["useTargetNoiseCheckBox"][1]
    assert "guard" in tips["stepsSpinBox"][1] and "<b>Guard:</b>" in text
    assert "teacher" in tips["periodSpinBox"][1]
    assert "what auto picks here and why" in tips["modelBundleComboBox"][1]
    assert "faint lesions" in tips["noiseCheckCollapsibleButton"][1]


def test_the_help_links_the_glossary_of_this_repository():
    # the help's terms (guard, bundle, NPS, ...) are explained on one page: the link must point at it
    source = (MODULE_DIR / "SelfSupCTDenoise.py").read_text(encoding="utf-8")
    url = re.search(r'GLOSSARY_URL = "([^"]+)"', source).group(1)
    assert "{glossary}" in help_text() and url.endswith("/blob/main/docs/GLOSSARY.md")
    assert (MODULE_DIR.parent / "docs" / "GLOSSARY.md").is_file()
