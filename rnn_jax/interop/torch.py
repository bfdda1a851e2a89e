"""Runs PyTorch recurrent modules with rnn_jax, weights and all.

  apply_fn, params = from_torch(torch_module)   # apply_fn(params, x, hx) == torch_module(x, hx)

An inference-only conversion onto rnn_jax's own cells and unroll: the parameters are
plain dicts of arrays in Keras's layout, `apply_fn` is jitted. A module type or an
argument value with no faithful counterpart raises a ValueError naming it. PyTorch is
never imported here: the module's tensors are read through their own methods.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from rnn_jax import cells, recurrent

def _torch_weights(module, name: str) -> np.ndarray:
  return getattr(module, name).detach().cpu().numpy().astype(np.float32)


def _from_tensor(x):
  """A torch.Tensor as a numpy array; arrays and tracers pass through."""
  if type(x).__name__ == "PackedSequence":
    raise ValueError("from_torch: PackedSequence inputs are not supported; pad the batch")
  if hasattr(x, "detach"):
    return x.detach().cpu().numpy()
  return jnp.asarray(x)


def _torch_gates(kind: str, matrix: np.ndarray) -> np.ndarray:
  """Torch's gate blocks (rows) in rnn_jax's order: GRU r, z, n -> z, r, h; others as they are."""
  if kind != "gru":
    return matrix
  r, z, n = np.split(matrix, 3, axis=0)
  return np.concatenate([z, r, n], axis=0)


def _torch_params(module, kind: str, suffix: str, use_bias: bool) -> dict:
  """One direction of one layer: Keras layout, kernels transposed, biases merged.

  Torch adds two biases, b_ih and b_hh. They sum into one for SimpleRNN and LSTM; the GRU
  applies b_hh inside the reset gate, exactly Keras's reset_after bias [2, 3*units].
  """
  w_ih = _torch_gates(kind, _torch_weights(module, "weight_ih" + suffix))
  w_hh = _torch_gates(kind, _torch_weights(module, "weight_hh" + suffix))
  params = {"kernel": w_ih.T, "recurrent_kernel": w_hh.T}
  if use_bias:
    b_ih = _torch_gates(kind, _torch_weights(module, "bias_ih" + suffix))
    b_hh = _torch_gates(kind, _torch_weights(module, "bias_hh" + suffix))
    params["bias"] = np.stack([b_ih, b_hh]) if kind == "gru" else b_ih + b_hh
  return {k: jnp.asarray(v) for k, v in params.items()}


def _torch_cell(module, kind: str) -> cells.Cell:
  if kind == "simple_rnn":
    nonlinearity = module.nonlinearity
    if nonlinearity not in ("tanh", "relu"):
      raise ValueError(f"from_torch: {type(module).__name__}: nonlinearity={nonlinearity!r} "
                       "is not supported")
    return cells.simple_rnn(nonlinearity, module.bias)
  if kind == "lstm":
    return cells.lstm("tanh", "sigmoid", module.bias)
  return cells.gru("tanh", "sigmoid", module.bias, reset_after=True)


TORCH_MODULES = {"RNN": "simple_rnn", "LSTM": "lstm", "GRU": "gru"}
TORCH_CELLS = {"RNNCell": "simple_rnn", "LSTMCell": "lstm", "GRUCell": "gru"}


def from_torch(module) -> tuple[Callable[..., Any], dict]:
  """Converts torch.nn.RNN, LSTM or GRU (or RNNCell, LSTMCell, GRUCell), for inference.

  Any num_layers, bidirectional, batch_first, bias and nonlinearity ('tanh', 'relu');
  dropout between layers is off in inference. proj_size is not supported.

  Returns:
    (apply_fn, params): `apply_fn(params, x, hx=None)` returns what the module returns:
    `(output, h_n)`, or `(output, (h_n, c_n))` for LSTM, with output
    <float32>[batch, time, directions*hidden] (batch_first, else [time, batch, ...]) and
    h_n <float32>[num_layers*directions, batch, hidden]; unbatched inputs
    <float32>[time, input] work as in torch. `hx` is torch's initial state. x and hx
    may be arrays or torch tensors. Cells return
    the next `h` (or `(h, c)`). params: {"l0": ..., "l0_reverse": ..., "l1": ...}, each
    {kernel, recurrent_kernel, bias} in Keras's layout.
  """
  name = type(module).__name__
  if name in TORCH_CELLS:
    return _from_torch_cell(module, TORCH_CELLS[name])
  if name not in TORCH_MODULES:
    raise ValueError(f"from_torch: module type {name} is not supported; supported: "
                     f"{', '.join([*TORCH_MODULES, *TORCH_CELLS])}")
  kind = TORCH_MODULES[name]
  if getattr(module, "proj_size", 0):
    raise ValueError(f"from_torch: {name}: proj_size={module.proj_size} is not supported")
  cell = _torch_cell(module, kind)
  num_layers, batch_first = module.num_layers, module.batch_first
  directions = ("", "_reverse") if module.bidirectional else ("",)
  names = [f"l{i}{d}" for i in range(num_layers) for d in directions]
  params = {n: _torch_params(module, kind, "_" + n, module.bias) for n in names}

  @jax.jit
  def run(params, x, hx):
    batched = x.ndim == 3
    if not batched:  # torch's unbatched input <float32>[time, input]
      x, hx = x[None], jax.tree_util.tree_map(lambda h: h[:, None], hx)
    elif not batch_first:
      x = jnp.swapaxes(x, 0, 1)
    finals, sequence = [], x
    for i in range(num_layers):
      outputs = []
      for d, direction in enumerate(directions):
        index = i * len(directions) + d
        carry = None if hx is None else jax.tree_util.tree_map(lambda h: h[index], hx)
        y, carry = recurrent.unroll(cell, params[f"l{i}{direction}"], sequence,
                                    units=module.hidden_size, initial_carry=carry, go_backwards=bool(direction),
                                    return_sequences=True)
        outputs.append(jnp.flip(y, axis=1) if direction else y)  # back in time order
        finals.append(carry)
      sequence = jnp.concatenate(outputs, axis=-1)
    state = jax.tree_util.tree_map(lambda *s: jnp.stack(s), *finals)  # [layers*dirs, batch, h]
    if not batched:
      sequence, state = sequence[0], jax.tree_util.tree_map(lambda s: s[:, 0], state)
    elif not batch_first:
      sequence = jnp.swapaxes(sequence, 0, 1)
    return sequence, state

  def apply_fn(params, x, hx=None):
    return run(params, _from_tensor(x), jax.tree_util.tree_map(_from_tensor, hx))

  return apply_fn, params


def _from_torch_cell(module, kind: str):
  cell = _torch_cell(module, kind)
  params = _torch_params(module, kind, "", module.bias)
  hidden_size = module.hidden_size

  @jax.jit
  def run(params, x, hx):
    carry = cell.initial_carry(x.shape[:-1], hidden_size, x.dtype) if hx is None else hx
    carry, _ = cell.step(params, carry, x)
    return carry

  def apply_fn(params, x, hx=None):
    return run(params, _from_tensor(x), jax.tree_util.tree_map(_from_tensor, hx))

  return apply_fn, params
