"""Recurrent cells as pure functions over parameter pytrees, one cell a file.

A cell is any object with three functions (see `base`):

  init(key, input_size, units) -> params
  initial_carry(batch_size, units, dtype=jnp.float32) -> carry
  step(params, carry, x_t) -> (carry, y_t)

They need nothing but JAX: they work under `jit`, `grad`, `vmap` and `lax.scan`, with
any batch shape (`x_t` <float32>[..., input_size]). Parameters of the Keras cells follow
Keras's names and layout so that weights map one to one: `kernel` <[input, G*units]>,
`recurrent_kernel` <[units, G*units]>, `bias`; gate order LSTM i, f, c, o; GRU z, r, h.
"""
from rnn_jax.cells.base import (Cell, GatedCell, Gates, Linear, fused_matmuls, glorot_uniform,
                                orthogonal)
from rnn_jax.cells.gru import gru
from rnn_jax.cells.lstm import lstm
from rnn_jax.cells.mgu import mgu
from rnn_jax.cells.min_gru import min_gru
from rnn_jax.cells.min_lstm import min_lstm
from rnn_jax.cells.simple_rnn import simple_rnn

CELLS = {"simple_rnn": simple_rnn, "lstm": lstm, "gru": gru, "mgu": mgu, "min_gru": min_gru,
         "min_lstm": min_lstm}
