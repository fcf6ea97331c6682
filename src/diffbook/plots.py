"""Plotting helpers shared by the chapters (matplotlib only)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from . import checks


def image_grid(
    images,
    *,
    ncols: int = 8,
    title: str | None = None,
    size: float = 0.6,
    row_labels=None,
    col_labels=None,
    ax=None,
):
    """Show a batch of images as one grid, row by row.

    Grey-scale for one channel, RGB for three; values outside ``[-1, 1]`` are
    clipped for display.

    Args:
      images: ``(N, H, W, C)`` with ``C`` 1 or 3, in ``[-1, 1]``.
      ncols: images per row.
      title: the axes' title.
      size: inches per image.
      row_labels: names of the rows, shown on the left.
      col_labels: names of the columns, shown on top.
      ax: a matplotlib ``Axes`` to draw into; default: a new figure.

    Returns:
      The matplotlib ``Figure``.

    Raises:
      TypeError: if ``ncols`` is not an int.
      ValueError: if ``images`` is not ``(N, H, W, 1 or 3)`` or ``ncols < 1``.
    """
    images = np.asarray(images, np.float32)
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"images must have shape (N, H, W, 1 or 3), got {images.shape}")
    ncols = checks.positive_int(ncols, "ncols")
    n, h, w, c = images.shape
    nrows = -(-n // ncols)
    pad = 1
    canvas = np.ones((nrows * (h + pad) - pad, ncols * (w + pad) - pad, c), np.float32)
    for i, img in enumerate(np.clip((images + 1) / 2, 0, 1)):
        r, col = divmod(i, ncols)
        canvas[r * (h + pad) : r * (h + pad) + h, col * (w + pad) : col * (w + pad) + w] = img
    if ax is None:
        fig, ax = plt.subplots(figsize=(size * ncols, size * nrows))
    else:
        fig = ax.figure
    ax.imshow(
        canvas[..., 0] if c == 1 else canvas,
        cmap="gray" if c == 1 else None,
        vmin=0,
        vmax=1,
        interpolation="nearest",
    )
    ax.set_xticks([])
    ax.set_yticks([])
    if row_labels is not None:
        ax.set_yticks([r * (h + pad) + h / 2 for r in range(len(row_labels))])
        ax.set_yticklabels(row_labels)
        ax.tick_params(left=False)
    if col_labels is not None:
        ax.xaxis.tick_top()
        ax.set_xticks([c * (w + pad) + w / 2 for c in range(len(col_labels))])
        ax.set_xticklabels(col_labels)
        ax.tick_params(top=False)
    for spine in ax.spines.values():
        spine.set_visible(False)
    if title:
        ax.set_title(title)
    return fig


def loss_curve(losses, *, smooth: int = 25, ax=None, label: str | None = None):
    """Training loss per step (faint) and its running mean over ``smooth`` steps, log scale.

    Args:
      losses: loss per step, shape ``(steps,)``.
      smooth: window of the running mean; 1 or less, or more than ``steps``, draws none.
      ax: a matplotlib ``Axes`` to draw into; default: a new figure.
      label: legend label of the running mean.

    Returns:
      The matplotlib ``Figure``.
    """
    losses = np.asarray(losses, np.float64)
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3))
    (line,) = ax.plot(losses, alpha=0.25)
    if len(losses) >= smooth > 1:
        mean = np.convolve(losses, np.ones(smooth) / smooth, mode="valid")
        ax.plot(np.arange(smooth - 1, len(losses)), mean, color=line.get_color(), label=label)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(True, alpha=0.3)
    return ax.figure
