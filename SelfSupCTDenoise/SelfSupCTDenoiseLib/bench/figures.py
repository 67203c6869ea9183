"""Side-by-side pictures of results (matplotlib), labelled with what they show."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Tuple

import numpy as np

SOFT_TISSUE = (-160.0, 240.0)  # window [low, high] in HU: W 400 / L 40


def side_by_side(panels: Sequence[Tuple[str, np.ndarray, str]], path: Path, title: str = "",
                 window: Tuple[float, float] = SOFT_TISSUE, noise_range: float = 100.0,
                 caption: Optional[str] = None, panel_inches: float = 3.2, columns: int = 0) -> Path:
    """2D images in rows of `columns` (0: one row); kind "ct" uses the CT window, "noise" a diverging
    map centred on 0 HU. Pixels are drawn as squares (no smoothing), so texture can be judged when
    panels are large."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = columns or len(panels)
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(panel_inches * columns, (panel_inches + 0.5) * rows + 0.2),
                             squeeze=False)
    for ax in axes.ravel()[len(panels):]:
        ax.axis("off")
    for ax, (label, image, kind) in zip(axes.ravel(), panels):
        if kind == "noise":
            shown = ax.imshow(image, cmap="RdBu_r", vmin=-noise_range, vmax=noise_range, interpolation="nearest")
            fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.02, label="HU")
        else:
            ax.imshow(image, cmap="gray", vmin=window[0], vmax=window[1], interpolation="nearest")
        ax.set_title(label, fontsize=9)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    if caption:
        fig.text(0.5, 0.01, caption, ha="center", fontsize=7)
    fig.tight_layout(rect=(0, 0.04 if caption else 0, 1, 1), h_pad=1.5)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
