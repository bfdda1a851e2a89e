"""Recurrent cells as pure functions over parameter pytrees.

Each cell is ten lines of math. A `Cell` bundles:

  init(key, input_size, units) -> params
  initial_carry(batch_size, units) -> carry
  step(params, carry, x_t) -> (carry, y_t)

and, for the unroll in `rnn_jax.recurrent`, the step split in two (the input
projection, which does not depend on the carry, and the recurrence):

  project(params, x, input_mask=None, *, one_matmul=False) -> xw  <float32>[..., gates*units]
  recurrent(params, carry, xw_t, recurrent_mask=None) -> (carry, y_t)

Parameters follow Keras's names and layout so weights map one to one: `kernel`
<float32>[input_size, gates*units], `recurrent_kernel` <float32>[units, gates*units],
`bias` <float32>[gates*units] (GRU with reset_after: [2, 3*units], input and recurrent
bias). Gate order: LSTM i, f, c, o; GRU z, r, h.

Dropout masks are drawn by the unroll, once per sequence (Gal & Ghahramani). Following
Keras 3: a cell with recurrent dropout gets one mask per gate, <float32>[gates, batch,
features] (Keras's `implementation=1`); with input dropout alone one shared mask,
<float32>[1, batch, features].

These functions need nothing but JAX: they work under `jit`, `grad`, `vmap` and
`lax.scan`, and with any batch shape (`x_t` <float32>[..., input_size]).
"""
from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple, Optional, Sequence, Union

import jax
import jax.numpy as jnp

from rnn_jax import activations

Params = dict[str, jax.Array]
Carry = Any
Array = jax.Array


class Cell(NamedTuple):
  """A recurrent cell: pure functions, no state. See the module docstring."""
  name: str
  num_gates: int
  init: Callable[..., Params]
  initial_carry: Callable[..., Carry]
  project: Callable[..., Array]
  recurrent: Callable[..., tuple[Carry, Array]]
  hidden: Callable[[Carry], Array]  # the part of the carry that is the output h

  def step(self, params: Params, carry: Carry, x_t: Array) -> tuple[Carry, Array]:
    """One time step: (params, carry, <float32>[..., input]) -> (carry, <float32>[..., units])."""
    return self.recurrent(params, carry, self.project(params, x_t))


# ----------------------------------------------------------------------------- helpers

def glorot_uniform(key: Array, shape: Sequence[int], dtype=jnp.float32) -> Array:
  """Keras's default kernel initializer, fans taken over the whole fused matrix."""
  return jax.nn.initializers.glorot_uniform()(key, shape, dtype)


def orthogonal(key: Array, shape: Sequence[int], dtype=jnp.float32) -> Array:
  """Keras's default recurrent initializer: orthogonal rows of the [units, G*units] matrix."""
  return jax.nn.initializers.orthogonal()(key, shape, dtype)


def gate_matmul(v: Array, kernel: Array, mask: Optional[Array]) -> Array:
  """v @ kernel, with a dropout mask on v: none, shared [1, ..., n] or per gate [G, ..., n].

  With per-gate masks gate g sees v * mask[g], as Keras's implementation=1 does.
  """
  if mask is None:
    return v @ kernel
  if mask.shape[0] == 1:
    return (v * mask[0]) @ kernel
  return jnp.concatenate(gate_matmuls(v, kernel, mask, mask.shape[0]), axis=-1)


def gate_matmuls(v: Array, kernel: Array, mask: Optional[Array], num_gates: int) -> list[Array]:
  """[v @ kernel_g for each gate g]: one <float32>[..., units] per gate, masked as `gate_matmul`.

  Inside the time loop the cells use one small matmul per gate rather than one fused
  matmul split afterwards: XLA's CPU code for elementwise fusions that read several
  column slices of one array is several times slower than for separate arrays, and
  at 32 units that costs more than the fused matmul saves.
  """
  if mask is None:
    return list(_split_matmul(v, kernel, num_gates))
  if mask.shape[0] == 1:
    return list(_split_matmul(v * mask[0], kernel, num_gates))
  kernels = jnp.split(kernel, num_gates, axis=-1)
  return [(v * m) @ k for m, k in zip(mask, kernels)]


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _split_matmul(v: Array, kernel: Array, num_gates: int) -> tuple[Array, ...]:
  """(v @ kernel_g for each gate g), with a derivative that is cheaper to transpose.

  The same values and derivatives as the plain matmuls, in forward and reverse mode;
  only the tangent's form differs: it is one matmul per operand, d_v @ kernel +
  v @ d_kernel, split over gates. Reverse mode (its transpose) then computes the
  gradients as one matmul each from the gates' joined cotangents [d_1 ... d_G]: the
  kernel's v.T @ [d_1 ... d_G] and v's [d_1 ... d_G] @ kernel.T, instead of G small
  matmuls each. Such matmuls are the costliest small kernels of a backward loop on CPU
  (2-core CPU, against G matmuls per gradient: the kernel's part took imdb_lstm's train
  step -19% and jena_gru's -6%, v's part another -5% each).
  """
  return tuple(v @ k for k in jnp.split(kernel, num_gates, axis=-1))


@_split_matmul.defjvp
def _split_matmul_jvp(num_gates, primals, tangents):
  v, kernel = primals
  d_v, d_kernel = tangents
  outputs = _split_matmul(v, kernel, num_gates)
  d_outputs = tuple(jnp.split(d_v @ kernel + v @ d_kernel, num_gates, axis=-1))
  return outputs, d_outputs


def project_gates(x: Array, kernel: Array, mask: Optional[Array], num_gates: int,
                  bias: Optional[Array] = None, one_matmul: bool = False) -> Array:
  """x @ kernel (+ bias) <float32>[..., G*units] as G per-gate matmuls (see `gate_matmuls`).

  The cells' slices of the result are then the per-gate products themselves: the bias
  is added per gate, before the concatenation, so that XLA takes each slice of the
  concatenation for its operand instead of materializing it. `one_matmul` (no mask)
  does one matmul instead, for a projection outside the time loop: an embedding table's
  10,000 rows take half the time of four matmuls and their concatenation.
  """
  if one_matmul and mask is None:
    return x @ kernel if bias is None else x @ kernel + bias
  gates = gate_matmuls(x, kernel, mask, num_gates)
  if bias is not None:
    gates = [g + b for g, b in zip(gates, jnp.split(bias, num_gates, axis=-1))]
  return jnp.concatenate(gates, axis=-1)


def _split_mask(mask: Optional[Array], start: int, stop: int) -> Optional[Array]:
  """Masks for gates [start, stop): a shared mask serves every gate."""
  if mask is None or mask.shape[0] == 1:
    return mask
  return mask[start:stop]


def _zeros_carry(batch_size: Union[int, Sequence[int]], units: int, dtype) -> Array:
  shape = (batch_size,) if isinstance(batch_size, int) else tuple(batch_size)
  return jnp.zeros((*shape, units), dtype)


def _init_kernels(key: Array, input_size: int, units: int, num_gates: int, dtype):
  k_kernel, k_recurrent = jax.random.split(key)
  return {
      "kernel": glorot_uniform(k_kernel, (input_size, num_gates * units), dtype),
      "recurrent_kernel": orthogonal(k_recurrent, (units, num_gates * units), dtype),
  }


# ----------------------------------------------------------------------------- SimpleRNN

def simple_rnn(activation: Union[str, Callable] = "tanh", use_bias: bool = True) -> Cell:
  """Elman RNN, h_t = f(x_t W + h_{t-1} U + b), as Keras's SimpleRNNCell."""
  act = activations.get(activation)

  def init(key, input_size, units, dtype=jnp.float32):
    params = _init_kernels(key, input_size, units, 1, dtype)
    if use_bias:
      params["bias"] = jnp.zeros((units,), dtype)
    return params

  def project(params, x, input_mask=None, *, one_matmul=False):
    return project_gates(x, params["kernel"], input_mask, 1,
                         params["bias"] if use_bias else None, one_matmul)

  def recurrent(params, h, xw_t, recurrent_mask=None):
    h = act(xw_t + gate_matmul(h, params["recurrent_kernel"], recurrent_mask))
    return h, h

  return Cell("simple_rnn", 1, init,
              lambda batch_size, units, dtype=jnp.float32: _zeros_carry(batch_size, units, dtype),
              project, recurrent, lambda h: h)


# ----------------------------------------------------------------------------- LSTM

def lstm(activation: Union[str, Callable] = "tanh",
         recurrent_activation: Union[str, Callable] = "sigmoid",
         use_bias: bool = True, unit_forget_bias: bool = True) -> Cell:
  """LSTM (Hochreiter & Schmidhuber 1997) as Keras's LSTMCell; gates i, f, c, o; carry (h, c)."""
  act, gate = activations.get(activation), activations.get(recurrent_activation)

  def init(key, input_size, units, dtype=jnp.float32):
    params = _init_kernels(key, input_size, units, 4, dtype)
    if use_bias:
      bias = jnp.zeros((4 * units,), dtype)
      params["bias"] = bias.at[units:2 * units].set(1.0) if unit_forget_bias else bias
    return params

  def initial_carry(batch_size, units, dtype=jnp.float32):
    return (_zeros_carry(batch_size, units, dtype), _zeros_carry(batch_size, units, dtype))

  def project(params, x, input_mask=None, *, one_matmul=False):
    return project_gates(x, params["kernel"], input_mask, 4,
                         params["bias"] if use_bias else None, one_matmul)

  def recurrent(params, carry, xw_t, recurrent_mask=None):
    h, c = carry
    i, f, g, o = (x + hu for x, hu in zip(
        jnp.split(xw_t, 4, axis=-1),
        gate_matmuls(h, params["recurrent_kernel"], recurrent_mask, 4)))
    c = gate(f) * c + gate(i) * act(g)
    h = gate(o) * act(c)
    return (h, c), h

  return Cell("lstm", 4, init, initial_carry, project, recurrent, lambda carry: carry[0])


# ----------------------------------------------------------------------------- GRU

def gru(activation: Union[str, Callable] = "tanh",
        recurrent_activation: Union[str, Callable] = "sigmoid",
        use_bias: bool = True, reset_after: bool = True) -> Cell:
  """GRU (Cho et al. 2014) as Keras's GRUCell; gates z, r, h.

  Keras's update, followed here so that weights carry over:
      h_t = z * h_{t-1} + (1 - z) * h~
  The lecture writes h_t = (1 - z) * h_{t-1} + z * h~: the same family with z relabelled
  (z_lecture = 1 - z_keras).

  reset_after=False is the lecture's (and Cho et al.'s) form, the reset gate applied to
  h_{t-1} before the recurrent matmul: h~ = f(x W_h + (r * h_{t-1}) U_h + b_h).
  reset_after=True (Keras's default, cuDNN's and PyTorch's) applies it after:
  h~ = f(x W_h + b_h + r * (h_{t-1} U_h + b'_h)), with a second, recurrent bias:
  `bias` is [2, 3*units].
  """
  act, gate = activations.get(activation), activations.get(recurrent_activation)

  def init(key, input_size, units, dtype=jnp.float32):
    params = _init_kernels(key, input_size, units, 3, dtype)
    if use_bias:
      params["bias"] = jnp.zeros((2, 3 * units) if reset_after else (3 * units,), dtype)
    return params

  def project(params, x, input_mask=None, *, one_matmul=False):
    bias = None if not use_bias else params["bias"][0] if reset_after else params["bias"]
    return project_gates(x, params["kernel"], input_mask, 3, bias, one_matmul)

  def recurrent(params, h, xw_t, recurrent_mask=None):
    units = h.shape[-1]
    kernel = params["recurrent_kernel"]
    x_z, x_r, x_h = jnp.split(xw_t, 3, axis=-1)
    if reset_after:
      h_z, h_r, h_h = gate_matmuls(h, kernel, recurrent_mask, 3)
      if use_bias:
        b_z, b_r, b_h = jnp.split(params["bias"][1], 3)
        h_z, h_r, h_h = h_z + b_z, h_r + b_r, h_h + b_h
      z, r = gate(x_z + h_z), gate(x_r + h_r)
      candidate = act(x_h + r * h_h)
    else:
      h_z, h_r = gate_matmuls(h, kernel[:, :2 * units], _split_mask(recurrent_mask, 0, 2), 2)
      z, r = gate(x_z + h_z), gate(x_r + h_r)
      candidate = act(x_h + gate_matmul(r * h, kernel[:, 2 * units:],
                                        _split_mask(recurrent_mask, 2, 3)))
    h = z * h + (1.0 - z) * candidate
    return h, h

  return Cell("gru", 3, init,
              lambda batch_size, units, dtype=jnp.float32: _zeros_carry(batch_size, units, dtype),
              project, recurrent, lambda h: h)


CELLS = {"simple_rnn": simple_rnn, "lstm": lstm, "gru": gru}
