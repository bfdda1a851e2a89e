"""rnn_jax: recurrent neural networks in JAX with Keras's semantics.

The core, which needs JAX alone:
  cells        a cell is three pure functions: init, initial_carry, step
  recurrent    the one unroll with Keras's semantics (masking, go_backwards, dropout)
  backends     the ways of computing that unroll, behind a registry
  layers       Dense, Embedding, RNN/LSTM/GRU/SimpleRNN, Bidirectional, Sequential, ...
  activations  activation functions by name
  parallel     parallel-in-time evaluation of nonlinear recurrences

The rooms around it, each imported on its own:
  train        `fit`, `TrainOptions`, callbacks, optimizers and metrics
  data         IMDB, time series, windows, batches, downloads
  io           save, load (`load`), export, checkpoints, run files
  interop      from_keras, from_torch; the cells as Flax modules (`interop.flax`)
  analysis     gradient diagnostics and plots
"""
import importlib

from rnn_jax import activations, cells, layers, recurrent
from rnn_jax.cells import Cell
from rnn_jax.recurrent import unroll

__version__ = "0.1.0"

# Modules that moved into the groups above: `rnn_jax.<old name>` still finds them.
_MOVED = {"serialize": "rnn_jax.io.serialize", "checkpoints": "rnn_jax.io.checkpoints",
          "export": "rnn_jax.io.export", "predictor": "rnn_jax.io.predictor",
          "files": "rnn_jax.io.files", "diagnostics": "rnn_jax.analysis.diagnostics",
          "plots": "rnn_jax.analysis.plots", "optim": "rnn_jax.train.optim",
          "metrics": "rnn_jax.train.metrics", "flax_modules": "rnn_jax.interop.flax"}


_ROOMS = ("train", "data", "io", "interop", "analysis")


def __getattr__(name: str):
  """`rnn_jax.<room>` and `rnn_jax.<module>` of `_MOVED`, imported when first named."""
  if name in _ROOMS:
    return importlib.import_module(f"rnn_jax.{name}")
  if name in _MOVED:
    return importlib.import_module(_MOVED[name])
  raise AttributeError(f"module 'rnn_jax' has no attribute {name!r}")


def load(run_dir, **kwargs):
  """A finished run's model, parameters and preprocessing: `rnn_jax.io.predictor.load`."""
  from rnn_jax.io import predictor  # pylint: disable=import-outside-toplevel
  return predictor.load(run_dir, **kwargs)
