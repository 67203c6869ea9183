"""Slice-wise inference (memory bound, out-of-memory fallback) and the engine's import rules."""

import re
import subprocess
import sys

import numpy as np
import torch

from conftest import ROOT
from SelfSupCTDenoiseLib.engine.inference import apply_slicewise

ENGINE = ROOT / "SelfSupCTDenoise" / "SelfSupCTDenoiseLib"


class ShrinkingMemory(torch.nn.Module):
    """Adds 1; raises CUDA's out-of-memory error for batches larger than `limit` slices."""

    def __init__(self, limit):
        super().__init__()
        self.limit = limit
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.batches = []

    def forward(self, x):
        self.batches.append(len(x))
        if len(x) > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return x + 1


def test_out_of_memory_halves_the_batch_reports_it_and_finishes():
    model, events = ShrinkingMemory(limit=2), []
    slices = np.zeros((9, 16, 16), np.float32)
    out = apply_slicewise(model, slices, batch=8, progress=events.append)
    np.testing.assert_array_equal(out, slices + 1)
    assert max(model.batches[2:]) <= 2 and model.batches[:3] == [8, 4, 2]
    assert any("retrying with 2 slice(s)" in e.message for e in events)


def test_only_one_batch_of_slices_reaches_the_network_at_a_time():
    model = ShrinkingMemory(limit=100)
    apply_slicewise(model, np.zeros((10, 16, 16), np.float32), batch=3)
    assert model.batches == [3, 3, 3, 1]


def test_engine_imports_no_slicer_qt_or_vtk():
    pattern = re.compile(r"^\s*(import|from)\s+(slicer|qt|vtk|ctk|PythonQt)\b", re.M)
    offenders = [p.name for p in ENGINE.rglob("*.py") if pattern.search(p.read_text(encoding="utf-8"))]
    assert offenders == []


def test_importing_the_engine_package_and_its_config_does_not_import_torch():
    code = ("import sys; import SelfSupCTDenoiseLib, SelfSupCTDenoiseLib.engine.config, SelfSupCTDenoiseLib.engine.progress; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT / "SelfSupCTDenoise", capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
