"""The cell contract, the optional gate layout, and the helpers cells share.

A cell is any object with three functions; nothing else is asked of it:

  init(key, input_size, units) -> params                         any pytree of arrays
  initial_carry(batch_size, units, dtype=jnp.float32) -> carry   arrays [*batch, ...]
  step(params, carry, x_t) -> (carry, y_t)                       x_t <float32>[..., input_size]

`rnn_jax.recurrent.unroll` runs any such cell with masking, go_backwards, input dropout
and the rest, through `lax.scan`.

A cell may also declare its gate layout (`Gates`): its step as an input projection
x_t @ kernel + bias, which does not depend on the carry, followed by a recurrence whose
matmuls it asks for through a `matmuls` function. That lets the unroll choose how to
compute them (one matmul per gate on CPU, one fused matmul on accelerators, see
`rnn_jax._gate_layouts`) and apply Keras's per-gate recurrent dropout. SimpleRNN, LSTM
and GRU declare it; a cell that does not still runs everywhere, on the portable path.
A cell linear in its state (minGRU, minLSTM) may declare that instead (`Linear`).
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional, Protocol, Sequence, Union, runtime_checkable

import jax
import jax.numpy as jnp

Params = Any
Carry = Any
Array = jax.Array
# matmuls(v, kernel, first_gate=0) -> [v @ kernel_g for each gate g of kernel]: kernel is a
# recurrent kernel <[units, n*units]> holding gates first_gate .. first_gate+n-1.
Matmuls = Callable[..., list]


@runtime_checkable
class Cell(Protocol):
  """The contract: any object with these three functions is a cell."""

  def init(self, key: Array, input_size: int, units: int) -> Params: ...

  def initial_carry(self, batch_size: Union[int, Sequence[int]], units: int,
                    dtype=jnp.float32) -> Carry: ...

  def step(self, params: Params, carry: Carry, x_t: Array) -> tuple[Carry, Array]: ...


class Gates(NamedTuple):
  """A cell's gate layout: what its step is made of, for the unroll's fast paths.

    step(params, carry, x_t) == recurrence(params, carry, x_t @ kernel + bias, fused_matmuls)
    with (kernel <[input, num_gates*units]>, bias <[num_gates*units]> or None)
    = input_projection(params), and output(carry) the step's output y_t.
  """
  num_gates: int
  input_projection: Callable[[Params], tuple[Array, Optional[Array]]]
  recurrence: Callable[[Params, Carry, Array, Matmuls], tuple[Carry, Array]]
  output: Callable[[Carry], Array]


class Linear(NamedTuple):
  """A cell whose step is linear in its state, h_t = a_t * h_{t-1} + b_t with (a_t, b_t)
  functions of x_t alone and output h_t (minGRU, minLSTM): the unroll then computes a
  whole sequence's coefficients at once and the states by one linear scan.

    (kernel <[input, num_gates*units]>, bias <[num_gates*units]>) = input_projection(params)
    gate_coefficients(params, [x_t @ kernel_g + bias_g for each gate g], log_space=False)
      -> (a, b) <[..., units]>, or (log a, log b) with `log_space` (then b > 0).

  As with `Gates`, the backend decides how the projection is computed (one matmul per
  gate, or one for all); `coefficients` is the plain form over any leading axes.
  """
  num_gates: int
  input_projection: Callable[[Params], tuple[Array, Array]]
  gate_coefficients: Callable[..., tuple[Array, Array]]

  def coefficients(self, params: Params, xs: Array, log_space: bool = False
                   ) -> tuple[Array, Array]:
    """(a, b) <float32>[..., units] of inputs xs <float32>[..., features], or their logs."""
    kernel, bias = self.input_projection(params)
    gates = jnp.split(xs @ kernel + bias, self.num_gates, axis=-1)
    return self.gate_coefficients(params, gates, log_space=log_space)


class GatedCell(NamedTuple):
  """A cell that declares its gate layout; `step` is derived from it."""
  name: str
  init: Callable[..., Params]
  initial_carry: Callable[..., Carry]
  gates: Gates
  # The factory's settings, ((name, value), ...): with `name`, what rebuilds the cell
  # (`cells.CELLS[name](**dict(config))`, rnn_jax.io.serialize).
  config: tuple = ()

  def step(self, params: Params, carry: Carry, x_t: Array) -> tuple[Carry, Array]:
    """(params, carry, <float32>[..., input]) -> (carry, <float32>[..., units])."""
    kernel, bias = self.gates.input_projection(params)
    xw_t = x_t @ kernel if bias is None else x_t @ kernel + bias
    return self.gates.recurrence(params, carry, xw_t, fused_matmuls)


def fused_matmuls(v: Array, kernel: Array, first_gate: int = 0) -> list:
  """The plain `Matmuls`: one v @ kernel, split per gate."""
  del first_gate
  return jnp.split(v @ kernel, kernel.shape[-1] // v.shape[-1], axis=-1)


# ----------------------------------------------------------------------------- helpers

def _in_float32(initializer, key: Array, shape: Sequence[int], dtype) -> Array:
  """`initializer` drawn in float32 and cast: the same values for any `dtype` (bfloat16
  too, which the QR of `orthogonal` does not take)."""
  return initializer(key, shape, jnp.float32).astype(dtype)


def glorot_uniform(key: Array, shape: Sequence[int], dtype=jnp.float32) -> Array:
  """Keras's default kernel initializer, fans taken over the whole fused matrix."""
  return _in_float32(jax.nn.initializers.glorot_uniform(), key, shape, dtype)


def orthogonal(key: Array, shape: Sequence[int], dtype=jnp.float32) -> Array:
  """Keras's default recurrent initializer: orthogonal rows of the [units, G*units] matrix."""
  return _in_float32(jax.nn.initializers.orthogonal(), key, shape, dtype)


def zeros_carry(batch_size: Union[int, Sequence[int]], units: int, dtype=jnp.float32) -> Array:
  """<dtype>[*batch, units] zeros; `batch_size` an int or a batch shape (() for none)."""
  shape = tuple(batch_size) if isinstance(batch_size, (tuple, list)) else (batch_size,)
  return jnp.zeros((*shape, units), dtype)


def init_kernels(key: Array, input_size: int, units: int, num_gates: int, dtype=jnp.float32):
  """{"kernel": glorot_uniform [input, G*units], "recurrent_kernel": orthogonal [units, G*units]}."""
  k_kernel, k_recurrent = jax.random.split(key)
  return {
      "kernel": glorot_uniform(k_kernel, (input_size, num_gates * units), dtype),
      "recurrent_kernel": orthogonal(k_recurrent, (units, num_gates * units), dtype),
  }
