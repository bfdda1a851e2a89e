"""Any rnn_jax cell as a Flax module: `flax.linen` (drops into `nn.RNN`) and `flax.nnx`.

  import flax.linen as nn
  from rnn_jax import cells
  from rnn_jax.interop import flax as rnn_flax
  rnn = nn.RNN(rnn_flax.LinenCell(cells.gru(), units=32))      # [batch, time, in] -> [batch, time, 32]

  from flax import nnx
  rnn = nnx.RNN(rnn_flax.NnxCell(cells.lstm(), in_features=8, units=32, rngs=nnx.Rngs(0)))

A cell here is anything with rnn_jax's cell contract (`init`, `initial_carry`, `step`,
rnn_jax.cells), your own cells included. The parameters keep rnn_jax's (Keras's) names:
a cell whose params are a dict gets one Flax parameter per entry (`kernel`,
`recurrent_kernel`, `bias`, ...), so the variables of `nn.RNN(LinenCell(cells.gru(), 32))`
are {"cell": {"kernel", "recurrent_kernel", "bias"}}, the dict `layers.GRU(32)` takes; any
other pytree is one parameter named "cell". Steps run the cell's own `step`: `nn.RNN`
over a wrapped cell equals rnn_jax's layer with the same parameters (tests/test_flax_modules.py).

Flax is imported only by this module (`import rnn_jax` does not import it).
"""
from __future__ import annotations

from typing import Any

import jax
import flax.linen as nn
from flax import nnx


def _param_names(cell, input_size: int, units: int):
  """The top-level names of the cell's params (a dict), or None for another pytree."""
  shapes = jax.eval_shape(lambda: cell.init(jax.random.PRNGKey(0), input_size, units))
  return list(shapes) if isinstance(shapes, dict) else None


def _positive_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _check_cell(cell, where: str) -> None:
  """A cell has rnn_jax's contract (init, initial_carry, step), or a `TypeError` says so."""
  missing = [f for f in ("init", "initial_carry", "step") if not callable(getattr(cell, f, None))]
  if missing:
    raise TypeError(f"{where}: {type(cell).__name__} is not a cell: it lacks "
                    f"{', '.join(missing)} (rnn_jax.cells' contract)")


def _cell_name(cell) -> str:
  return getattr(cell, "name", type(cell).__name__)


def _value(variable):
  """An nnx.Variable's value (`get_value` in newer Flax, `.value` before)."""
  get = getattr(variable, "get_value", None)
  return get() if get is not None else variable.value


class LinenCell(nn.RNNCellBase):
  """`cell` as a `flax.linen.RNNCellBase`: `(carry, x_t) -> (carry, y_t)` with params
  created by `cell.init` under rnn_jax's names."""
  cell: Any
  units: int

  def __post_init__(self):
    """A `ValueError`/`TypeError` at construction for units that are not a positive integer
    or a cell without the contract (not a ZeroDivisionError deep inside `init`)."""
    where = f"LinenCell({_cell_name(self.cell)}, units={self.units!r})"
    _check_cell(self.cell, where)
    if not _positive_int(self.units):
      raise ValueError(f"{where}: units must be a positive integer, got {self.units!r}")
    super().__post_init__()

  @nn.compact
  def __call__(self, carry, inputs):
    input_size = inputs.shape[-1]
    init = lambda key: self.cell.init(key, input_size, self.units)
    names = _param_names(self.cell, input_size, self.units)
    if names is None:
      params = self.param("cell", init)
    else:  # each entry from its own key: the same initializers, independent draws
      params = {name: self.param(name, lambda key, name=name: init(key)[name])
                for name in names}
    return self.cell.step(params, carry, inputs)

  @nn.nowrap
  def initialize_carry(self, rng, input_shape):
    """The cell's initial carry for inputs of `input_shape` ([*batch, features])."""
    del rng
    return self.cell.initial_carry(tuple(input_shape[:-1]), self.units)

  @property
  def num_feature_axes(self) -> int:
    return 1


class NnxCell(nnx.RNNCellBase):
  """`cell` as a `flax.nnx` module (an `nnx.RNNCellBase`, for `nnx.RNN`), its params
  as `nnx.Param`s under rnn_jax's names."""

  def __init__(self, cell, in_features: int, units: int, *, rngs: nnx.Rngs):
    where = f"NnxCell({_cell_name(cell)}, in_features={in_features!r}, units={units!r})"
    _check_cell(cell, where)
    for name, value in (("in_features", in_features), ("units", units)):
      if not _positive_int(value):
        raise ValueError(f"{where}: {name} must be a positive integer, got {value!r}")
    if not isinstance(rngs, nnx.Rngs):
      raise TypeError(f"{where}: rngs must be an nnx.Rngs (e.g. nnx.Rngs(0)), got "
                      f"{type(rngs).__name__}")
    self.cell = nnx.static(cell) if hasattr(nnx, "static") else cell
    self.in_features = in_features
    self.units = units
    params = cell.init(rngs.params(), in_features, units)
    if isinstance(params, dict):
      self.param_names = tuple(params)
      for name, value in params.items():
        setattr(self, name, nnx.Param(value))
    else:
      self.param_names = None
      self.params = nnx.Param(params)

  @property
  def cell_params(self):
    """The params as the cell's `step` takes them."""
    if self.param_names is None:
      return _value(self.params)
    return {name: _value(getattr(self, name)) for name in self.param_names}

  def __call__(self, carry, inputs):
    if inputs.shape[-1] != self.in_features:  # the params were made for in_features
      raise ValueError(f"NnxCell({_cell_name(self.cell)}, in_features={self.in_features}, "
                       f"units={self.units}): inputs have {inputs.shape[-1]} features, "
                       f"expected in_features={self.in_features}")
    return self.cell.step(self.cell_params, carry, inputs)

  def initialize_carry(self, input_shape, rngs=None, carry_init=None):
    del rngs, carry_init
    return self.cell.initial_carry(tuple(input_shape[:-1]), self.units)

  @property
  def num_feature_axes(self) -> int:
    return 1
