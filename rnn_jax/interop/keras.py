"""Runs Keras 3 recurrent models with rnn_jax, weights and all.

  apply_fn, params = from_keras(keras_model)    # apply_fn(params, x) == keras_model(x)

An inference-only conversion onto rnn_jax's own cells, layers and unroll: the parameters
are plain dicts of arrays (Keras's names), `apply_fn` is jitted. Each supported layer type
has one converter in a table; a layer type or an argument value with no faithful
counterpart raises a ValueError naming the layer and the argument. Keras is imported only
when a converter needs it.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from rnn_jax import cells, layers

Array = jax.Array

# Keras 3's built-in activations with their Keras defaults (leaky_relu's slope is 0.2
# in Keras, 0.1 in rnn_jax.activations, so the names cannot be shared).
KERAS_ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "linear": lambda x: x,
    "tanh": jnp.tanh,
    "sigmoid": jax.nn.sigmoid,
    "hard_sigmoid": jax.nn.hard_sigmoid,
    "relu": jax.nn.relu,
    "relu6": jax.nn.relu6,
    "leaky_relu": lambda x: jax.nn.leaky_relu(x, negative_slope=0.2),
    "elu": jax.nn.elu,
    "selu": jax.nn.selu,
    "softplus": jax.nn.softplus,
    "softsign": jax.nn.soft_sign,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "hard_silu": jax.nn.hard_silu,
    "hard_swish": jax.nn.hard_silu,
    "exponential": jnp.exp,
    "log_sigmoid": jax.nn.log_sigmoid,
    "softmax": lambda x: jax.nn.softmax(x, axis=-1),
    "log_softmax": lambda x: jax.nn.log_softmax(x, axis=-1),
}


def _keras_activation(layer, argument: str, name) -> Callable[[Array], Array]:
  """The JAX function for a serialized Keras activation (`layer.get_config()[argument]`)."""
  if name is None:
    return KERAS_ACTIVATIONS["linear"]
  if isinstance(name, str) and name in KERAS_ACTIVATIONS:
    return KERAS_ACTIVATIONS[name]
  import keras  # pylint: disable=g-import-not-at-top
  if isinstance(name, str) and keras.backend.backend() == "jax" and name in dir(keras.activations):
    return keras.activations.get(name)  # a built-in: pure JAX under the JAX backend
  raise _unsupported(layer, argument, name)


def _unsupported(layer, argument: str, value) -> ValueError:
  return ValueError(f"from_keras: layer {layer.name!r} ({type(layer).__name__}): "
                    f"{argument}={value!r} is not supported")


def _weights(variable) -> np.ndarray:
  import keras  # pylint: disable=g-import-not-at-top
  return np.asarray(keras.ops.convert_to_numpy(variable), np.float32)


def _check_common(layer) -> None:
  """Settings no converted layer may use: a compute dtype other than float32, quantization."""
  dtype = getattr(layer, "compute_dtype", "float32")
  if dtype != "float32":
    raise _unsupported(layer, "dtype", dtype)
  if getattr(layer, "quantization_mode", None):
    raise _unsupported(layer, "quantization_mode", layer.quantization_mode)


# --- one converter per Keras layer type: layer -> [(rnn_jax layer, params), ...]

KERAS_CELLS = {"SimpleRNNCell": "simple_rnn", "LSTMCell": "lstm", "GRUCell": "gru"}


def _keras_rnn(layer):
  """SimpleRNN, LSTM, GRU, and RNN(SimpleRNNCell | LSTMCell | GRUCell)."""
  config, cell = layer.get_config(), layer.cell
  _check_common(layer)
  kind = KERAS_CELLS.get(type(cell).__name__)
  if kind is None:
    raise _unsupported(layer, "cell", type(cell).__name__)
  if config.get("stateful"):
    raise _unsupported(layer, "stateful", True)
  cell_config = cell.get_config()
  activation = _keras_activation(layer, "activation", cell_config["activation"])
  use_bias = cell_config["use_bias"]
  if kind == "simple_rnn":
    rnn_cell = cells.simple_rnn(activation, use_bias)
  else:
    gate = _keras_activation(layer, "recurrent_activation", cell_config["recurrent_activation"])
    if kind == "lstm":  # unit_forget_bias only initializes the bias, which is copied
      rnn_cell = cells.lstm(activation, gate, use_bias)
    else:
      rnn_cell = cells.gru(activation, gate, use_bias, cell_config["reset_after"])
  # Keras's unrolled loop (unroll=True) repeats the previous output at masked steps even
  # when asked for zeros, so zero_output_for_mask only holds for its scan loop.
  unroll = bool(config.get("unroll", False))
  rnn = layers.RNN(
      rnn_cell, cell_config["units"],
      return_sequences=config["return_sequences"], return_state=config["return_state"],
      go_backwards=config["go_backwards"],
      zero_output_for_mask=config.get("zero_output_for_mask", False) and not unroll,
      unroll=True if unroll else 1)  # dropout: identity in inference
  params = {"kernel": _weights(cell.kernel), "recurrent_kernel": _weights(cell.recurrent_kernel)}
  if use_bias:
    params["bias"] = _weights(cell.bias)
  return [(rnn, params)]


def _keras_bidirectional(layer):
  _check_common(layer)
  if getattr(layer, "stateful", False):
    raise _unsupported(layer, "stateful", True)
  [(forward, p_forward)] = _keras_rnn(layer.forward_layer)
  [(backward, p_backward)] = _keras_rnn(layer.backward_layer)
  bidirectional = layers.Bidirectional(
      forward, layer.merge_mode, backward,
      zero_output_for_mask=not (forward.unroll is True or backward.unroll is True))
  return [(bidirectional, {"forward": p_forward, "backward": p_backward})]


def _keras_dense(layer):
  config = layer.get_config()
  _check_common(layer)
  activation = _keras_activation(layer, "activation", config["activation"])
  dense = layers.Dense(config["units"], activation, config["use_bias"])
  params = {"kernel": _weights(layer.kernel)}
  if config["use_bias"]:
    params["bias"] = _weights(layer.bias)
  return [(dense, params)]


def _keras_embedding(layer):
  config = layer.get_config()
  _check_common(layer)
  embedding = layers.Embedding(config["input_dim"], config["output_dim"], config["mask_zero"])
  return [(embedding, {"embeddings": _weights(layer.embeddings)})]


def _keras_flatten(layer):
  config = layer.get_config()
  if config.get("data_format", "channels_last") != "channels_last":
    raise _unsupported(layer, "data_format", config["data_format"])
  return [(layers.Flatten(), {})]


@dataclasses.dataclass(frozen=True)
class _Activation:
  """Keras's Activation layer: fn(x), the mask passed on."""
  fn: Callable[[Array], Array]

  def init(self, key, input_shape):
    return {}, input_shape

  def apply(self, params, x, mask=None, *, training=False, key=None):
    return self.fn(x), mask


@dataclasses.dataclass(frozen=True)
class _Masking:
  """Keras's Masking layer: steps whose features all equal `mask_value` become zeros and masked."""
  mask_value: float

  def init(self, key, input_shape):
    return {}, input_shape

  def apply(self, params, x, mask=None, *, training=False, key=None):
    keep = jnp.any(x != self.mask_value, axis=-1, keepdims=True)
    return jnp.where(keep, x, 0), keep[..., 0]


def _keras_identity(layer):
  """Layers that are the identity in inference: Dropout and its relatives."""
  return [(_Activation(KERAS_ACTIVATIONS["linear"]), {})]


def _keras_activation_layer(layer):
  activation = _keras_activation(layer, "activation", layer.get_config()["activation"])
  return [(_Activation(activation), {})]


def _keras_masking(layer):
  return [(_Masking(float(layer.get_config()["mask_value"])), {})]


def _keras_sequential(layer):
  return _convert_keras_layers(layer.layers)


KERAS_CONVERTERS: dict[str, Callable[[Any], list]] = {
    "InputLayer": lambda layer: [],
    "Embedding": _keras_embedding,
    "SimpleRNN": _keras_rnn,
    "LSTM": _keras_rnn,
    "GRU": _keras_rnn,
    "RNN": _keras_rnn,
    "Bidirectional": _keras_bidirectional,
    "Dense": _keras_dense,
    "Flatten": _keras_flatten,
    "Dropout": _keras_identity,
    "SpatialDropout1D": _keras_identity,
    "GaussianDropout": _keras_identity,
    "GaussianNoise": _keras_identity,
    "AlphaDropout": _keras_identity,
    "Activation": _keras_activation_layer,
    "Masking": _keras_masking,
    "Sequential": _keras_sequential,
}


def _convert_keras_layers(keras_layers) -> list:
  converted = []
  for layer in keras_layers:
    converter = KERAS_CONVERTERS.get(type(layer).__name__)
    if converter is None:
      raise ValueError(f"from_keras: layer {layer.name!r} of type {type(layer).__name__} is not "
                       f"supported; supported: {', '.join(sorted(KERAS_CONVERTERS))}")
    converted.extend(converter(layer))
  return converted


def from_keras(model) -> tuple[Callable[..., Any], tuple]:
  """Converts a built Keras 3 `Sequential` into rnn_jax, for inference.

  Args:
    model: a `keras.Sequential` of InputLayer, Embedding, SimpleRNN, LSTM, GRU, RNN (with
      one of their cells), Bidirectional, Dense, Flatten, Dropout (and its noise
      relatives), Activation, Masking or nested Sequential layers, built (made with
      `keras.Input`, or called once).

  Returns:
    (apply_fn, params): `apply_fn(params, x)` equals `model(x)` (training=False), e.g.
    <float32>[batch, 1] from <int32>[batch, time] ids; a tuple where Keras returns one
    (`return_state`, Bidirectional merge_mode=None). params: a tuple, one entry per
    rnn_jax layer, with Keras's weight names.
  """
  if type(model).__name__ != "Sequential":
    raise ValueError(f"from_keras: expected a keras.Sequential, got {type(model).__name__}")
  if not model.built:
    raise ValueError(f"from_keras: model {model.name!r} is not built; give it a keras.Input "
                     "or call it once on a batch")
  converted = _convert_keras_layers(model.layers)
  for layer, _ in converted[:-1]:
    if getattr(layer, "return_state", False) or getattr(layer, "merge_mode", "") is None:
      raise ValueError("from_keras: return_state and merge_mode=None give several outputs; "
                       "only the last layer may use them")
  stack = layers.Sequential([layer for layer, _ in converted])
  params = tuple(jax.tree_util.tree_map(jnp.asarray, p) for _, p in converted)

  @jax.jit
  def apply_fn(params, x):
    return stack.apply(params, jnp.asarray(x), training=False)

  return apply_fn, params
