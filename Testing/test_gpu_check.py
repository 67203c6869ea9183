"""benchmarks/gpu_check.py, the script a lent CUDA machine runs, runs end to end on the CPU at toy sizes."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_runs_on_cpu_at_toy_sizes(tmp_path, tiny_bundle):
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    report = module.main(["--device", "cpu", "--tiny", "--bundle", str(tiny_bundle.path), "--json", str(tmp_path / "r.json")])
    assert (tmp_path / "r.json").exists()
    (name, row), = report["bundles"].items()
    assert name == str(tiny_bundle.path)
    click = row["click_to_result"]
    assert click["shape"] == [4, 64, 64] and click["finite"] and click["seconds"] > 0
    scores = row["psnr_soft_vs_steps"]
    assert sorted(scores, key=int) == ["0", "2", "4", "6"]
    assert all(math.isfinite(v) and 10 < v < 60 for v in scores.values())
    assert row["oom_fallback"] == {"applicable": False}
