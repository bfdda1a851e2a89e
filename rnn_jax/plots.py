"""Training curves as PNG files (matplotlib's Agg backend, no display needed)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top


def _save_atomic(fig, path: os.PathLike, close: bool = True) -> None:
  path = Path(path)
  tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
  fig.savefig(tmp, dpi=100, bbox_inches="tight")
  if close:
    plt.close(fig)
  os.replace(tmp, path)


def _save_png_and_svg(fig, stem: os.PathLike) -> None:
  """<stem>.png and <stem>.svg, each written atomically."""
  for suffix in (".png", ".svg"):
    _save_atomic(fig, Path(str(stem) + suffix), close=False)
  plt.close(fig)


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


def gradient_profiles(report: Mapping, stem: os.PathLike) -> None:
  """||dL/dh_t|| against T - t, one line per model at init (dashed) and trained (solid);
  saved as <stem>.png and <stem>.svg."""
  fig, ax = plt.subplots(figsize=(7.5, 4.8))
  for i, (name, entry) in enumerate(report["models"].items()):
    color = f"C{i}"
    for stage, style in (("init", "--"), ("trained", "-")):
      if stage in entry:
        norms = entry[stage]["d_states"]
        back = list(range(len(norms) - 1, -1, -1))  # T - t
        ax.plot(back, norms, style, color=color, label=f"{name} ({stage})")
  ax.set_yscale("log")
  ax.set_xlabel("T - t (steps back from the loss)")
  ax.set_ylabel("||dL/dh_t||")
  ax.set_title(f"How far back the gradient reaches (adding problem, T={report['seq_len']})")
  ax.legend(fontsize=8)
  _save_png_and_svg(fig, stem)


def clipping(runs: Mapping, stem: os.PathLike) -> None:
  """Training loss per epoch of the clipped and unclipped runs (log scale); a diverged
  run is marked where it stopped. Saved as <stem>.png and <stem>.svg."""
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for name in ("unclipped", "clipped"):
    run = runs[name]
    if run["outcome"] == "trained":
      ax.plot([h["epoch"] for h in run["history"]], [h["loss"] for h in run["history"]],
              marker="o", label=f"{name}: test MSE {run['test_mse']:.3g}")
    else:
      ax.plot([], [], "rx", label=f"{name}: diverged (NaN guard)")
  ax.axhline(runs["mean_predictor_mse"], color="gray", linestyle="--", label="predict the mean")
  ax.set_yscale("log")
  ax.set_xlabel("Epoch")
  ax.set_ylabel("Training MSE")
  ax.set_title("Gradient clipping on an exploding relu RNN (SGD)")
  ax.legend()
  _save_png_and_svg(fig, stem)
