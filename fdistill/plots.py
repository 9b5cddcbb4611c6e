"""Pictures of a run: teacher-vs-student scatter plots (vectors) and image grids."""
from __future__ import annotations

import os

import torch


def save_histograms(path: str, panels: dict[str, torch.Tensor], title: str = "", means: torch.Tensor | None = None):
    """1-D samples: one histogram per named sample set on shared bins; mixture means marked if given."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    vals = {k: v.detach().float().cpu().reshape(-1) for k, v in panels.items()}
    allv = torch.cat(list(vals.values()))
    bins = torch.linspace(float(allv.quantile(0.001)), float(allv.quantile(0.999)), 121).tolist()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, v in vals.items():
        ax.hist(v.numpy(), bins=bins, density=True, histtype="step", label=name)
    if means is not None:
        for m in means.detach().float().cpu().reshape(-1).tolist():
            ax.axvline(m, color="red", lw=0.6, ls=":")
    ax.legend()
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def save_scatter(path: str, panels: dict[str, torch.Tensor], title: str = "", means: torch.Tensor | None = None):
    """One panel per named point cloud (first two coordinates), same axes; mixture means marked if given. 1-D samples
    are drawn as histograms (``save_histograms``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = {k: v.detach().float().cpu().reshape(v.shape[0], -1)[:, :2] for k, v in panels.items()}
    if next(iter(pts.values())).shape[1] == 1:
        return save_histograms(path, panels, title, means)
    allp = torch.cat(list(pts.values()))
    lo, hi = allp.quantile(0.002, dim=0), allp.quantile(0.998, dim=0)
    pad = 0.1 * (hi - lo)
    fig, axes = plt.subplots(1, len(pts), figsize=(4 * len(pts), 4), squeeze=False)
    for ax, (name, p) in zip(axes[0], pts.items()):
        ax.scatter(p[:, 0], p[:, 1], s=2, alpha=0.35, linewidths=0)
        if means is not None:
            m = means.detach().float().cpu().reshape(means.shape[0], -1)
            ax.scatter(m[:, 0], m[:, 1], marker="x", c="red", s=30)
        ax.set_xlim(float(lo[0] - pad[0]), float(hi[0] + pad[0]))
        ax.set_ylim(float(lo[1] - pad[1]), float(hi[1] + pad[1]))
        ax.set_title(name)
        ax.set_aspect("equal")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def save_image_grid(path: str, images: torch.Tensor, nrow: int | None = None):
    """Save images in ``[-1, 1]`` as one PNG grid."""
    from torchvision.utils import save_image

    n = images.shape[0]
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    save_image((images.detach().float().cpu().clamp(-1, 1) + 1) / 2, path, nrow=nrow or int(n**0.5 + 0.999),
               padding=1)


def save_samples(path_stem: str, samples: torch.Tensor, reference: torch.Tensor | None = None, title: str = "",
                 means=None) -> str:
    """Scatter plot for vectors (student beside the reference), image grid for images. Returns the file written."""
    if samples.ndim == 2:
        panels = {"teacher": reference, "student": samples} if reference is not None else {"samples": samples}
        save_scatter(path_stem + ".png", panels, title, means)
    else:
        save_image_grid(path_stem + ".png", samples)
    return path_stem + ".png"
