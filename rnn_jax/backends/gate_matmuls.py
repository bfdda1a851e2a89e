"""The matmuls of a cell with a gate layout (`cells.Gates`), masked per gate as Keras's
recurrent dropout asks: what the "scan", "recompute" and "fused" backends share.

A mask is None, one shared by every gate <[1, ..., n]>, or one per gate <[G, ..., n]>
(Keras's implementation=1 draws one per gate under recurrent dropout).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def affine(x, kernel, bias):
  return x @ kernel if bias is None else x @ kernel + bias


def project(x, kernel, bias, mask, num_gates):
  """x @ kernel + bias with the input dropout mask (None, shared or per gate)."""
  if mask is None:
    return affine(x, kernel, bias)
  if mask.shape[0] == 1:
    return affine(x * mask[0], kernel, bias)
  xw = jnp.concatenate([(x * m) @ k for m, k in zip(mask, jnp.split(kernel, num_gates, -1))],
                       axis=-1)
  return xw if bias is None else xw + bias


def gates_of(v, kernel, mask, first_gate):
  """(number of gates in `kernel`, their masks) for a recurrent kernel <[units, n*units]>."""
  n = kernel.shape[-1] // v.shape[-1]
  if mask is None or mask.shape[0] == 1:
    return n, mask
  return n, mask[first_gate:first_gate + n]


def matmuls_with(mask, per_gate_masks):
  """A `cells.Matmuls`: one v @ kernel split per gate where every gate sees the same input
  (no mask, or one shared), else per_gate_masks(v, kernel, masks, n)."""
  def matmuls(v, kernel, first_gate=0):
    n, mask_ = gates_of(v, kernel, mask, first_gate)
    if mask_ is None:
      return jnp.split(v @ kernel, n, axis=-1)
    if mask_.shape[0] == 1:
      return jnp.split((v * mask_[0]) @ kernel, n, axis=-1)
    return per_gate_masks(v, kernel, mask_, n)
  return matmuls


def plain_matmuls(mask):
  """The reference `Matmuls`: gate g's input masked by mask[g], one matmul per gate."""
  return matmuls_with(mask, lambda v, kernel, masks, n: [
      (v * m) @ k for m, k in zip(masks, jnp.split(kernel, n, axis=-1))])


def fused_matmuls(mask):
  """One matmul for all gates; per-gate masks make it one batched matmul over the gates."""
  return matmuls_with(mask, lambda v, kernel, masks, n: list(jnp.einsum(
      "g...u,ugk->g...k", v * masks, kernel.reshape(kernel.shape[0], n, -1))))
