"""Pictures for the command and the demo: 2-D scatter plots over exact mixture densities, and image grids."""
from __future__ import annotations

import numpy as np
import torch

COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red")


def density_contours(ax, models, lim: float = 5.0, sigma: float = 0.0):
    """Contours of each mixture's density ``q_i`` (one colour per model)."""
    grid = torch.linspace(-lim, lim, 200, dtype=torch.float64)
    xx, yy = torch.meshgrid(grid, grid, indexing="xy")
    pts = torch.stack([xx.reshape(-1), yy.reshape(-1)], 1)
    for i, m in enumerate(models):
        dens = m.log_prob(pts, sigma).exp().reshape(xx.shape)
        ax.contour(xx.numpy(), yy.numpy(), dens.numpy(), levels=4, colors=COLORS[i % len(COLORS)],
                   linewidths=0.7, alpha=0.7)


def scatter_panel(ax, x, models, title: str, lim: float = 5.0, color="k"):
    """Samples ``x (B, 2)`` over the models' density contours."""
    density_contours(ax, models, lim)
    x = x.detach().cpu().numpy()
    ax.scatter(x[:, 0], x[:, 1], s=2, c=color, alpha=0.35, linewidths=0)
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])


def image_grid(images: np.ndarray, cols: int | None = None):
    """``(B, H, W, C)`` floats in [0, 1] -> one PIL image, ``cols`` per row."""
    from PIL import Image

    b, h, w, c = images.shape
    cols = cols or int(np.ceil(np.sqrt(b)))
    rows = int(np.ceil(b / cols))
    canvas = np.ones((rows * h, cols * w, c), dtype=np.float32)
    for i, img in enumerate(images):
        r, k = divmod(i, cols)
        canvas[r * h:(r + 1) * h, k * w:(k + 1) * w] = img
    arr = (canvas * 255).round().clip(0, 255).astype(np.uint8)
    return Image.fromarray(arr[..., 0] if c == 1 else arr)
