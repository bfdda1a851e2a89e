"""rnn_jax: recurrent neural networks in JAX with Keras's semantics.

  cells      pure-function SimpleRNN, LSTM and GRU cells
  recurrent  the one scan-based unroll (masking, go_backwards, variational dropout)
  layers     Dense, Embedding, RNN/LSTM/GRU/SimpleRNN, Bidirectional, Sequential, ...
  interop    from_keras, from_torch
  load       a finished run as a `Predictor` (rnn_jax.predictor)
"""
from rnn_jax import activations, cells, layers, recurrent
from rnn_jax.cells import Cell
from rnn_jax.recurrent import unroll

__version__ = "0.1.0"


def load(run_dir, **kwargs):
  """A finished run's model, parameters and preprocessing: `rnn_jax.predictor.load`."""
  from rnn_jax import predictor  # pylint: disable=import-outside-toplevel
  return predictor.load(run_dir, **kwargs)
