"""PNG image grids: ground truth and reconstructions (one row each), images in [0, 1]."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch


def save_image_grid(
    rows: Sequence[torch.Tensor],
    row_labels: Sequence[str],
    path: str | Path,
    col_labels: Sequence[str] | None = None,
    cell_inches: float = 0.9,
    title: str | None = None,
) -> Path:
    """One row per ``[N, C, H, W]`` pixel tensor (1 or 3 channels); rows may have different ``N``."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    if len(rows) != len(row_labels):
        raise ValueError(f"{len(rows)} rows but {len(row_labels)} row labels")
    ncol = max(int(r.shape[0]) for r in rows)
    label_w = 1.6
    top_in = (0.45 if title else 0.05) + (0.2 if col_labels is not None else 0.0)
    height = cell_inches * len(rows) + top_in + 0.05
    fig = plt.figure(figsize=(label_w + cell_inches * ncol, height))
    axes = fig.subplots(len(rows), ncol, squeeze=False)
    for i, (r, lab) in enumerate(zip(rows, row_labels)):
        imgs = r.detach().float().clamp(0, 1).cpu().numpy()
        for j in range(ncol):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            for s in ax.spines.values():
                s.set_visible(False)
            if j < imgs.shape[0]:
                im = imgs[j]
                if im.shape[0] == 1:
                    ax.imshow(im[0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
                else:
                    ax.imshow(np.transpose(im, (1, 2, 0)), interpolation="nearest")
            if j == 0:
                ax.set_ylabel(lab, rotation=0, ha="right", va="center", fontsize=8)
            if i == 0 and col_labels is not None and j < len(col_labels):
                ax.set_title(col_labels[j], fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.subplots_adjust(left=label_w / (label_w + cell_inches * ncol), right=0.99, top=1 - top_in / height,
                        bottom=0.05 / height, wspace=0.05, hspace=0.08)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
