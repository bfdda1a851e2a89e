"""A trained model as a serialized `jax.export` artifact (StableHLO), batch size polymorphic.

  rnn_jax.io.export.export(rnn_jax.load(run), "model.jax")            # write
  # in any process with jax and numpy (no rnn_jax):
  exported = jax.export.deserialize(open("model.jax", "rb").read())
  predictions = exported.call(x)      # x: the run's preprocessed inputs, any batch size

The artifact holds the parameters as constants and computes the predictor's
`predict_arrays` (the model, then its postprocessing: P(positive) for IMDB, the target in
its unit for forecasting) from the model's input array <input_dtype>[batch, ...]. It is
lowered for the platforms given (default: this one's; e.g. ("cpu", "cuda") for both).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

import jax
import jax.numpy as jnp

from rnn_jax import backends, layers


def exported(predictor, platforms: Optional[Sequence[str]] = None) -> jax.export.Exported:
  """The predictor's `predict_arrays` as a `jax.export.Exported` with a symbolic batch."""
  record = predictor.record
  (batch,) = jax.export.symbolic_shape("batch")
  spec = jax.ShapeDtypeStruct((batch, *record["input_shape"]), jnp.dtype(record["input_dtype"]))
  fn = predictor.predictions_fn(_exportable(predictor.model))
  params = jax.tree.map(jnp.asarray, predictor.params)
  return jax.export.export(jax.jit(lambda x: fn(params, x)),
                           platforms=None if platforms is None else tuple(platforms))(spec)


def _exportable(model):
  """`model` with "auto" for each recurrent layer whose backend lowers to a custom call
  that an artifact cannot carry (`Backend.exportable`: the native CPU kernel)."""
  return layers.with_implementation(
      model, lambda chosen: chosen if chosen == "auto" or backends.get(chosen).exportable
      else "auto")


def export(predictor, path: os.PathLike, platforms: Optional[Sequence[str]] = None) -> Path:
  """Writes the serialized artifact to `path`; returns the path."""
  from rnn_jax.io import files  # pylint: disable=import-outside-toplevel
  path = Path(path)
  data = exported(predictor, platforms).serialize()
  files.make_dirs(path.parent)
  return files.write_atomic(path, bytes(data))
