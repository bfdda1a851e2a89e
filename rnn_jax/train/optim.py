"""Optimizers with Keras 3's defaults and update rules, as optax transformations.

  rmsprop  Keras: v = rho v + (1 - rho) g^2;  w -= lr g / sqrt(v + eps)    (eps inside sqrt)
  adam     Keras: w -= lr sqrt(1 - b2^t) / (1 - b1^t) m / (sqrt(v) + eps)  (eps not bias-corrected,
           unlike optax.adam, whose eps is added to the bias-corrected sqrt(v))
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import optax

OPTIMIZERS = ("rmsprop", "adam", "sgd")
SCHEDULES = ("constant", "cosine", "exponential")
LearningRate = Union[float, Callable[[jax.Array], jax.Array]]  # a number or an optax schedule


class KerasAdamState(NamedTuple):
  count: jax.Array  # <int32>[]
  mu: optax.Updates
  nu: optax.Updates


def keras_adam(learning_rate: LearningRate, beta_1: float = 0.9, beta_2: float = 0.999,
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
    lr = learning_rate(state.count) if callable(learning_rate) else learning_rate
    alpha = lr * jnp.sqrt(1 - beta_2**t) / (1 - beta_1**t)
    updates = jax.tree.map(lambda m, v: -alpha * m / (jnp.sqrt(v) + epsilon), mu, nu)
    return updates, KerasAdamState(count, mu, nu)

  return optax.GradientTransformation(init, update)


def keras_rmsprop(learning_rate: LearningRate, rho: float = 0.9,
                  epsilon: float = 1e-7) -> optax.GradientTransformation:
  """RMSprop exactly as `keras.optimizers.RMSprop` (momentum=0, centered=False)."""
  return optax.rmsprop(learning_rate, decay=rho, eps=epsilon, eps_in_sqrt=True,
                       initial_scale=0.0)


def schedule(name: str, learning_rate: float, *, total_steps: int, warmup_steps: int = 0,
             steps_per_epoch: int = 1, decay_rate: float = 0.9) -> LearningRate:
  """The learning rate per optimizer step, an optax schedule (a float for 'constant').

    constant     learning_rate
    cosine       cosine decay from learning_rate to 0 at `total_steps`
    exponential  learning_rate * decay_rate ** (steps / steps_per_epoch): per epoch
  each after a linear warm-up from 0 over `warmup_steps` when warmup_steps > 0.
  """
  if name not in SCHEDULES:
    raise ValueError(f"learning-rate schedule {name!r} is not one of {SCHEDULES}")
  if name == "constant" and not warmup_steps:
    return learning_rate
  decay_steps = max(total_steps - warmup_steps, 1)
  after = {
      "constant": lambda: optax.constant_schedule(learning_rate),
      "cosine": lambda: optax.cosine_decay_schedule(learning_rate, decay_steps),
      "exponential": lambda: optax.exponential_decay(learning_rate, max(steps_per_epoch, 1),
                                                     decay_rate),
  }[name]()
  if not warmup_steps:
    return after
  return optax.join_schedules(
      [optax.linear_schedule(0.0, learning_rate, warmup_steps), after], [warmup_steps])


def make(name: Union[str, optax.GradientTransformation], learning_rate: LearningRate,
         clip_norm: Optional[float] = None) -> optax.GradientTransformation:
  """The optimizer `name` ('rmsprop' | 'adam' | 'sgd'; or any optax transformation, taken
  as it is), after global-norm clipping when `clip_norm`. `learning_rate` may be a schedule.
  SGD is Keras's without momentum, w -= lr g: the one whose steps grow with the gradient,
  so that clipping shows (experiments.gradients)."""
  if isinstance(name, optax.GradientTransformation):
    optimizer = name
  elif name in OPTIMIZERS:
    optimizer = {"rmsprop": keras_rmsprop, "adam": keras_adam,
                 "sgd": optax.sgd}[name](learning_rate)
  else:
    raise ValueError(f"optimizer {name!r} is not one of {OPTIMIZERS} (or an optax "
                     "GradientTransformation)")
  if clip_norm is not None:
    optimizer = optax.chain(optax.clip_by_global_norm(clip_norm), optimizer)
  return optimizer
