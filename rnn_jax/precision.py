"""Mixed precision as Keras's `mixed_bfloat16` policy: float32 parameters, bfloat16 compute.

  model = precision.with_compute_dtype(model, "bfloat16")

The wrapped model's `init` is the model's own (float32 parameters, so the optimizer
state is float32 too). Its `apply` casts the floating parameters and inputs to the
compute dtype, runs the model there (matmuls, activations and the recurrent carries in
bfloat16), and returns float32 outputs, from which losses and metrics are computed in
float32. Gradients flow back through the casts to the float32 parameters.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

COMPUTE_DTYPES = ("float32", "bfloat16", "float16")


def cast_floating(tree, dtype):
  """Every floating array of `tree` as `dtype`; integer arrays (token ids) as they are."""
  return jax.tree.map(
      lambda a: a.astype(dtype) if jnp.issubdtype(jnp.result_type(a), jnp.floating) else a, tree)


@dataclasses.dataclass(frozen=True)
class MixedPrecision:
  """`model` with float32 parameters computed in `compute_dtype` (see the module docstring)."""
  model: Any
  compute_dtype: str = "bfloat16"

  def init(self, key, sample_input):
    return self.model.init(key, sample_input)

  def apply(self, params, x, **kwargs):
    dtype = jnp.dtype(self.compute_dtype)
    y = self.model.apply(cast_floating(params, dtype), cast_floating(x, dtype), **kwargs)
    return cast_floating(y, jnp.float32)


def with_compute_dtype(model, compute_dtype: str):
  """`model` itself for float32, else wrapped in `MixedPrecision`."""
  if compute_dtype not in COMPUTE_DTYPES:
    raise ValueError(f"compute dtype {compute_dtype!r} is not one of {COMPUTE_DTYPES}")
  if compute_dtype == "float32":
    return model
  return MixedPrecision(model, compute_dtype)
