"""Activation functions by name: Keras's names, and a leaky ReLU of slope 0.1.

`get("tanh")` returns a function; a callable is passed through unchanged, so every
`activation=` argument in rnn_jax takes either a name or a function.
"""
from __future__ import annotations

from typing import Callable, Union

import jax
import jax.numpy as jnp

Activation = Callable[[jax.Array], jax.Array]


def leaky_relu(x: jax.Array) -> jax.Array:
  """Leaky ReLU of slope 0.1, max(0.1·x, x). (Keras's default slope is 0.2.)"""
  return jnp.maximum(0.1 * x, x)


def linear(x: jax.Array) -> jax.Array:
  return x


# hard_sigmoid is Keras 3's: relu6(x + 3) / 6, i.e. clip(x / 6 + 1/2, 0, 1).
_ACTIVATIONS: dict[str, Activation] = {
    "sigmoid": jax.nn.sigmoid,
    "tanh": jnp.tanh,
    "relu": jax.nn.relu,
    "leaky_relu": leaky_relu,
    "elu": jax.nn.elu,
    "hard_sigmoid": jax.nn.hard_sigmoid,
    "softmax": jax.nn.softmax,
    "linear": linear,
}

NAMES = tuple(sorted(_ACTIVATIONS))


def get(activation: Union[str, Activation, None]) -> Activation:
  """Returns the activation named `activation` (None means linear)."""
  if activation is None:
    return linear
  if callable(activation):
    return activation
  try:
    return _ACTIVATIONS[activation]
  except KeyError:
    raise ValueError(
        f"unknown activation {activation!r}; known: {', '.join(NAMES)}") from None
