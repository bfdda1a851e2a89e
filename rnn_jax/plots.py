"""Training curves as PNG files (matplotlib's Agg backend, no display needed)."""
from __future__ import annotations

import os
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

from rnn_jax import files  # pylint: disable=g-import-not-at-top


def _save_atomic(fig, path: os.PathLike) -> None:
  """Through a temporary file; a write error is one `UserError` line (rnn_jax.files)."""
  files.save_figure(fig, path, dpi=100, bbox_inches="tight")


def history(history: Sequence[Mapping[str, float]], path: os.PathLike, title: str = "") -> None:
  """Training and validation loss per epoch, and accuracy beside it when there is one."""
  panels = ["loss"] + (["accuracy"] if history and "accuracy" in history[0] else [])
  fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
  epochs = [h["epoch"] for h in history]
  for ax, name in zip(axes[0], panels):
    ax.plot(epochs, [h[name] for h in history], "bo", label=f"Training {name}")
    if history and f"val_{name}" in history[0]:
      ax.plot(epochs, [h[f"val_{name}"] for h in history], "b", label=f"Validation {name}")
    ax.set_title(f"Training and validation {name}" + (f" ({title})" if title else ""))
    ax.set_xlabel("Epochs")
    ax.set_ylabel(name.capitalize())
    ax.legend()
  _save_atomic(fig, path)


def compare(curves: Mapping[str, Sequence[float]], path: os.PathLike, *, ylabel: str,
            title: str = "", baseline: float | None = None) -> None:
  """One line per named curve (e.g. validation MSE per epoch of several models)."""
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for name, values in curves.items():
    ax.plot(range(1, len(values) + 1), values, marker="o", markersize=3, label=name)
  if baseline is not None:
    ax.axhline(baseline, color="gray", linestyle="--", label="predict the mean")
  ax.set_yscale("log")
  ax.set_xlabel("Epochs")
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  ax.legend()
  _save_atomic(fig, path)
