"""Other frameworks' recurrent models in rnn_jax, and rnn_jax's cells in Flax.

  keras  from_keras: a Keras 3 model's layers and weights as an rnn_jax function
  torch  from_torch: a torch.nn.RNN/LSTM/GRU (or its cell) as an rnn_jax function
  flax   LinenCell, NnxCell: any rnn_jax cell as a flax.linen or flax.nnx module
         (imported on its own, `from rnn_jax.interop import flax`: it needs Flax)
"""
from rnn_jax.interop.keras import KERAS_ACTIVATIONS, KERAS_CELLS, from_keras
from rnn_jax.interop.torch import TORCH_CELLS, TORCH_MODULES, from_torch
