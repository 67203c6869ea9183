"""The NPS figure of a simulated dataset: radial NPS of the inserted noise vs white noise (PNG)."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Sequence

import numpy as np

from ..quality.nps import lag1_autocorrelation
from .dataset import noise_nps_summary


def write_nps_plot(dataset_dir: Path, png: Path, key: str = "pancreas",
                   tags: Sequence[str] = ("d25_hann", "d25_ramlak")) -> Dict[str, object]:
    """Radial NPS of the inserted noise of one subject vs white noise of the same variance (PNG).

    Returns the numbers plotted (peak frequency, band fractions, lag-1 autocorrelation per tag).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import SimpleITK as sitk

    ndct_img = sitk.ReadImage(str(Path(dataset_dir) / key / "ndct.nrrd"))
    ndct = sitk.GetArrayFromImage(ndct_img).astype(np.float32)
    sx, sy = ndct_img.GetSpacing()[:2]
    body = ndct > -500
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    numbers = {}
    for tag in tags:
        ldct = sitk.GetArrayFromImage(sitk.ReadImage(str(Path(dataset_dir) / key / f"ldct_{tag}.nrrd")))
        noise = ldct.astype(np.float32) - ndct
        s = noise_nps_summary(noise, body, (sy, sx))
        white_level = s["variance_hu2"] * sx * sy  # flat NPS of white noise with the same variance
        line = axes[0].plot(s["freq_mm"], s["nps_mm"], label=f"{tag} (std {np.sqrt(s['variance_hu2']):.0f} HU)")[0]
        axes[0].axhline(white_level, ls="--", color=line.get_color(), lw=1, label="white, same variance")
        axes[1].plot(s["freq_px"], np.asarray(s["nps_px"]) / s["variance_hu2"], color=line.get_color(), label=tag)
        numbers[tag] = {"std_hu": float(np.sqrt(s["variance_hu2"])), "peak_mm": s["peak_mm"],
                        "peak_px": s["peak_px"], "mean_freq_px": s["mean_freq_px"],
                        "band_edges_px": s["band_edges_px"], "band_fractions_px": s["band_fractions_px"],
                        "lag1_autocorr": lag1_autocorrelation(noise, body), "roi": s["roi"], "n_rois": s["n_rois"]}
    axes[1].axhline(1.0, ls="--", color="k", lw=1, label="white noise")
    axes[0].set(xlabel="spatial frequency (mm$^{-1}$)", ylabel="NPS (HU$^2$ mm$^2$)",
                title=f"Inserted noise, {key} ({sx:.2f} mm pixels)")
    axes[1].set(xlabel="spatial frequency (cycles/pixel)", ylabel="NPS / variance (pixel$^2$)",
                title="Same, spacing-free")
    for ax in axes:
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return numbers
