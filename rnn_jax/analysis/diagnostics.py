"""How gradients travel back through time: the vanishing and exploding gradient story.

For any cell with the contract of `rnn_jax.cells` (init, initial_carry, step):

  step_gradient_norms      ||dL/dx_t|| and ||dL/dh_t|| for every step, in one backward pass
  jacobian_spectral_norms  the largest singular value of dh_t/dh_{t-1} along the sequence
  global_grad_norm         the norm of a whole gradient pytree (optax.global_norm)

The gradient that reaches step t from a loss at step T is a product of T - t Jacobians
dh_s/dh_{s-1}: when their norms stay below 1 it vanishes geometrically (a tanh RNN with
small weights), above 1 it can explode (a relu RNN with a large recurrent kernel), and
an LSTM's additive cell state, f * c + i * g, lets it decay only as fast as the forget
gate closes.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

Array = jax.Array


def global_grad_norm(grads: Any) -> Array:
  """sqrt of the sum of squares of every leaf of `grads`, as `optax.global_norm`."""
  return jnp.sqrt(sum(jnp.sum(jnp.square(leaf)) for leaf in jax.tree_util.tree_leaves(grads)))


def _last_output_sum(ys: Array) -> Array:
  return ys[:, -1].sum()


def _tree_norm_per_step(tree: Any) -> Array:
  """Norm over everything but the leading (time) axis and over the leaves: <[time]>.

  Scaled by each step's largest entry before squaring: vanishing gradients of 1e-25
  are what this is for, and their squares would underflow float32 to 0.
  """
  flat = jnp.concatenate([leaf.reshape(leaf.shape[0], -1)
                          for leaf in jax.tree_util.tree_leaves(tree)], axis=1)
  scale = jnp.max(jnp.abs(flat), axis=1, keepdims=True)
  safe = jnp.where(scale > 0, scale, 1.0)
  return safe[:, 0] * jnp.sqrt(jnp.sum(jnp.square(flat / safe), axis=1))


def step_gradient_norms(cell, params, xs: Array, units: int, *,
                        loss: Optional[Callable[[Array], Array]] = None,
                        initial_carry: Any = None) -> dict[str, Array]:
  """The size of the loss's gradient at every step of the sequence.

  Args:
    cell: init / initial_carry / step, as `rnn_jax.cells`.
    params: the cell's parameters.
    xs: <float32>[batch, time, features].
    units: the cell's units, for its initial carry.
    loss: ys <float32>[batch, time, units] (every step's output) -> scalar; by default
      the sum of the last step's output.
    initial_carry: the carry before the first step; the cell's (zeros) by default.

  Returns:
    A dict of two arrays: "d_inputs" <float32>[time], ||dL/dx_t|| over batch and
    features; "d_states" <float32>[time], ||dL/dh_t|| over batch and every leaf of the
    carry after step t (for an LSTM, h and c together).

  The step's output y_t is taken to be the leaf of its new carry that it returns as
  y_t, the same array (h: every cell of rnn_jax.cells does so). For a
  cell whose output is an array apart from its carry, d_states[t] counts only the
  paths from h_t through later steps, not the one through y_t.
  """
  if initial_carry is None:
    initial_carry = cell.initial_carry(xs.shape[0], units, xs.dtype)
  return _step_gradient_norms(cell, loss or _last_output_sum, params, xs, initial_carry)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _step_gradient_norms(cell, loss, params, xs, initial_carry):
  # dL/dh_t is the gradient w.r.t. a zero added to the carry after step t: the same
  # forward values, and one backward pass gives every step's.
  time = xs.shape[1]
  perturbations = jax.tree_util.tree_map(
      lambda c: jnp.zeros((time, *c.shape), c.dtype), initial_carry)

  def total_loss(xs, perturbations):
    def step(carry, inputs):
      x_t, eps_t = inputs
      carry, y_t = cell.step(params, carry, x_t)
      leaves, tree = jax.tree_util.tree_flatten(carry)
      eps_leaves = jax.tree_util.tree_leaves(eps_t)
      # The output is part of the carry (h, as the step returns it): it takes the same
      # perturbation, so that dL/dh_t counts the path through y_t too.
      output_leaf = [i for i, leaf in enumerate(leaves) if leaf is y_t]
      leaves = [leaf + eps for leaf, eps in zip(leaves, eps_leaves)]
      if output_leaf:
        y_t = leaves[output_leaf[0]]
      return jax.tree_util.tree_unflatten(tree, leaves), y_t
    _, ys = jax.lax.scan(step, initial_carry, (jnp.swapaxes(xs, 0, 1), perturbations))
    return loss(jnp.swapaxes(ys, 0, 1))

  d_xs, d_states = jax.grad(total_loss, argnums=(0, 1))(xs, perturbations)
  return {"d_inputs": _tree_norm_per_step(jnp.swapaxes(d_xs, 0, 1)),
          "d_states": _tree_norm_per_step(d_states)}


def jacobian_spectral_norms(cell, params, xs: Array, units: int, *,
                            initial_carry: Any = None) -> Array:
  """||dh_t/dh_{t-1}||_2 along the sequence, averaged over the batch: <float32>[time].

  The Jacobian is of the whole carry (for an LSTM, (h, c) flattened into one vector of
  2 * units), taken with `jax.jacfwd` at the carries the sequence passes through, one
  sequence at a time; its norm is its largest singular value.

  Args:
    xs: <float32>[batch, time, features].
    initial_carry: as in `step_gradient_norms`.
  """
  if initial_carry is None:
    initial_carry = cell.initial_carry(xs.shape[0], units, xs.dtype)
  return _jacobian_spectral_norms(cell, params, xs, initial_carry)


@functools.partial(jax.jit, static_argnums=(0,))
def _jacobian_spectral_norms(cell, params, xs, initial_carry):
  def before_each_step(carry, x_t):  # the carry each step starts from
    new, _ = cell.step(params, carry, x_t)
    return new, carry
  _, carries = jax.lax.scan(before_each_step, initial_carry, jnp.swapaxes(xs, 0, 1))

  def spectral_norm(carry, x_t):
    """One sequence's step: carry leaves [units], x_t [features]."""
    flat, unravel = ravel_pytree(carry)
    step = lambda flat: ravel_pytree(cell.step(params, unravel(flat), x_t)[0])[0]
    return jnp.linalg.norm(jax.jacfwd(step)(flat), ord=2)

  # vmap over time, then batch: carries are [time, batch, ...], xs [batch, time, ...].
  norms = jax.vmap(jax.vmap(spectral_norm), in_axes=(1, 0))(carries, xs)  # [batch, time]
  return norms.mean(axis=0)
