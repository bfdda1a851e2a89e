"""Optimizers with Keras 3's defaults and update rules, as optax transformations.

  rmsprop  Keras: v = rho v + (1 - rho) g^2;  w -= lr g / sqrt(v + eps)    (eps inside sqrt)
  adam     Keras: w -= lr sqrt(1 - b2^t) / (1 - b1^t) m / (sqrt(v) + eps)  (eps not bias-corrected,
           unlike optax.adam, whose eps is added to the bias-corrected sqrt(v))
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

OPTIMIZERS = ("rmsprop", "adam", "sgd")


class KerasAdamState(NamedTuple):
  count: jax.Array  # <int32>[]
  mu: optax.Updates
  nu: optax.Updates


def keras_adam(learning_rate: float, beta_1: float = 0.9, beta_2: float = 0.999,
               epsilon: float = 1e-7) -> optax.GradientTransformation:
  """Adam exactly as `keras.optimizers.Adam` (amsgrad=False)."""

  def init(params):
    zeros = lambda: jax.tree.map(jnp.zeros_like, params)
    return KerasAdamState(jnp.zeros([], jnp.int32), zeros(), zeros())

  def update(grads, state, params=None):
    count = state.count + 1
    t = count.astype(jnp.float32)
    mu = jax.tree.map(lambda m, g: m + (g - m) * (1 - beta_1), state.mu, grads)
    nu = jax.tree.map(lambda v, g: v + (g * g - v) * (1 - beta_2), state.nu, grads)
    alpha = learning_rate * jnp.sqrt(1 - beta_2**t) / (1 - beta_1**t)
    updates = jax.tree.map(lambda m, v: -alpha * m / (jnp.sqrt(v) + epsilon), mu, nu)
    return updates, KerasAdamState(count, mu, nu)

  return optax.GradientTransformation(init, update)


def keras_rmsprop(learning_rate: float, rho: float = 0.9,
                  epsilon: float = 1e-7) -> optax.GradientTransformation:
  """RMSprop exactly as `keras.optimizers.RMSprop` (momentum=0, centered=False)."""
  return optax.rmsprop(learning_rate, decay=rho, eps=epsilon, eps_in_sqrt=True,
                       initial_scale=0.0)


def make(name: str, learning_rate: float,
         clip_norm: Optional[float] = None) -> optax.GradientTransformation:
  """The optimizer `name` ('rmsprop' | 'adam' | 'sgd'), after global-norm clipping when
  `clip_norm`. SGD is Keras's without momentum, w -= lr g: the one whose steps grow with
  the gradient, so that clipping shows (experiments.gradients)."""
  optimizer = {"rmsprop": keras_rmsprop, "adam": keras_adam,
               "sgd": optax.sgd}[name](learning_rate)
  if clip_norm is not None:
    optimizer = optax.chain(optax.clip_by_global_norm(clip_norm), optimizer)
  return optimizer
