"""One module per framework; each has `train_step(task, x, y) -> step` (a function that runs
one synchronous training step and returns the loss) or raises `Unsupported`."""


class Unsupported(Exception):
  """The framework lacks something the task needs (the message says what)."""


def require_classic_cells(task) -> None:
  """Peers have no minGRU / minLSTM layer."""
  if task.minimal:
    raise Unsupported("no minGRU / minLSTM layer")


def jax_loss(name: str, pred, y):
  """The task's loss in JAX (mean over the batch) for the JAX peers: MAE, or Keras's
  binary cross-entropy on sigmoid probabilities (clipped to [1e-7, 1 - 1e-7])."""
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  if name == "mae":
    return jnp.mean(jnp.abs(pred - y))
  p = jnp.clip(pred, 1e-7, 1 - 1e-7)
  return -jnp.mean(y * jnp.log(p) + (1 - y) * jnp.log(1 - p))
