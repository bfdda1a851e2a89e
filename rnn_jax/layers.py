"""Layers as compositions of pure functions, and `Sequential` to stack them.

Every layer is a frozen dataclass of its settings with two pure methods:

  init(key, input_shape) -> (params, output_shape)       shapes without the batch axis
  apply(params, x, mask=None, *, training=False, key=None) -> (y, mask)

`mask` (<bool>[batch, time], False at padding) flows through the stack as in Keras:
`Embedding(mask_zero=True)` makes it, recurrent layers consume it, layers that keep the
time axis pass it on. Parameters are plain dicts with Keras's names.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, ClassVar, Optional, Sequence, Union

import jax
import jax.numpy as jnp

from rnn_jax import activations, backends, cells, recurrent
from rnn_jax.cells import glorot_uniform

Array = jax.Array
Shape = tuple[int, ...]


def _check_sizes(layer, *names: str, label: Optional[str] = None) -> None:
  """A `ValueError` naming the layer (`label`, else its type) for a size that is not a
  positive integer."""
  for name in names:
    value = getattr(layer, name)
    if isinstance(value, bool) or not hasattr(value, "__index__") or value < 1:
      raise ValueError(f"{label or type(layer).__name__}: {name} must be a positive integer, "
                       f"got {value!r}")


def _check_rates(layer, *names: str, label: Optional[str] = None) -> None:
  """A `ValueError` naming the layer for a dropout rate outside [0, 1) (NaN too)."""
  for name in names:
    rate = getattr(layer, name)
    if not 0.0 <= rate < 1.0:
      raise ValueError(f"{label or type(layer).__name__}: {name} must be in [0, 1), got "
                       f"{rate!r}")


@dataclasses.dataclass(frozen=True)
class Dense:
  """y = activation(x @ kernel + bias) on the last axis. <float32>[..., in] -> [..., units]."""
  units: int
  activation: Union[str, Callable, None] = None
  use_bias: bool = True

  def __post_init__(self):
    _check_sizes(self, "units")

  def init(self, key, input_shape: Shape):
    params = {"kernel": glorot_uniform(key, (input_shape[-1], self.units))}
    if self.use_bias:
      params["bias"] = jnp.zeros((self.units,))
    return params, (*input_shape[:-1], self.units)

  def apply(self, params, x, mask=None, *, training=False, key=None):
    y = x @ params["kernel"]
    if self.use_bias:
      y = y + params["bias"]
    return activations.get(self.activation)(y), mask


@dataclasses.dataclass(frozen=True)
class Maxout:
  """Maxout unit (Goodfellow et al. 2013): the max over `pieces` affine maps. [..., in] -> [..., units]."""
  units: int
  pieces: int = 2

  def __post_init__(self):
    _check_sizes(self, "units", "pieces")

  def init(self, key, input_shape: Shape):
    params = {"kernel": glorot_uniform(key, (input_shape[-1], self.units * self.pieces)),
              "bias": jnp.zeros((self.units * self.pieces,))}
    return params, (*input_shape[:-1], self.units)

  def apply(self, params, x, mask=None, *, training=False, key=None):
    y = x @ params["kernel"] + params["bias"]
    return y.reshape(*y.shape[:-1], self.units, self.pieces).max(axis=-1), mask


@dataclasses.dataclass(frozen=True)
class Embedding:
  """Token ids <int32>[batch, time] -> <float32>[batch, time, output_dim].

  With `mask_zero`, id 0 is padding: the output mask is `ids != 0`.
  """
  input_dim: int
  output_dim: int
  mask_zero: bool = False

  def __post_init__(self):
    _check_sizes(self, "input_dim", "output_dim")

  def init(self, key, input_shape: Shape):
    # Keras's default embeddings_initializer: uniform(-0.05, 0.05).
    table = jax.random.uniform(key, (self.input_dim, self.output_dim), minval=-0.05, maxval=0.05)
    return {"embeddings": table}, (*input_shape, self.output_dim)

  def apply(self, params, x, mask=None, *, training=False, key=None):
    y, mask = self.apply_embedded(params, x, mask)
    return y.lookup(), mask

  def apply_embedded(self, params, x, mask=None) -> tuple[recurrent.Embedded, Any]:
    """`apply` with the lookup left to the consumer: (Embedded(table, ids), mask)."""
    ids = x.astype(jnp.int32)
    return recurrent.Embedded(params["embeddings"], ids), (ids != 0) if self.mask_zero else mask


@dataclasses.dataclass(frozen=True)
class Flatten:
  """[batch, d1, d2, ...] -> [batch, d1 * d2 * ...]; drops the mask."""

  def init(self, key, input_shape: Shape):
    return {}, (math.prod(input_shape),)

  def apply(self, params, x, mask=None, *, training=False, key=None):
    return x.reshape(x.shape[0], -1), None


@dataclasses.dataclass(frozen=True)
class Dropout:
  """Inverted dropout at `rate`, a fresh mask for every element; identity in inference."""
  rate: float
  takes_batch_axis_name: ClassVar[bool] = True  # see `Sequential.apply`

  def __post_init__(self):
    _check_rates(self, "rate")

  def init(self, key, input_shape: Shape):
    return {}, input_shape

  def apply(self, params, x, mask=None, *, training=False, key=None, batch_axis_name=None):
    if not training or self.rate <= 0.0:
      return x, mask
    if key is None:
      raise ValueError("Dropout in training needs a PRNG key: pass key=...")
    return x * recurrent.dropout_mask(key, self.rate, x.shape, x.dtype,
                                      batch_axis_name=batch_axis_name), mask


@dataclasses.dataclass(frozen=True)
class RNN:
  """A recurrent layer: any cell (`rnn_jax.cells`) unrolled by `rnn_jax.recurrent.unroll`.

  <float32>[batch, time, features] (or `recurrent.Embedded`) -> [batch, time, units]
  with `return_sequences`, else [batch, units]. With `return_state` the output is
  `(y, *carry_leaves)` as in Keras (`(y, h)` for GRU and SimpleRNN, `(y, h, c)` for
  LSTM); use it as a stack's last layer. `implementation` is the unroll's backend
  (`rnn_jax.backends`; "auto": the platform's choice for the cell).
  """
  cell: cells.Cell
  units: int
  return_sequences: bool = False
  return_state: bool = False
  go_backwards: bool = False
  dropout: float = 0.0
  recurrent_dropout: float = 0.0
  zero_output_for_mask: bool = False
  unroll: int = 1
  implementation: str = "auto"
  method: str = "deer"  # implementation="parallel"'s Newton method
  takes_embedded: ClassVar[bool] = True  # see `Sequential`
  takes_batch_axis_name: ClassVar[bool] = True  # see `Sequential.apply`

  def __post_init__(self):
    _check_sizes(self, "units", label=self._name)
    _check_rates(self, "dropout", "recurrent_dropout", label=self._name)

  @property
  def _name(self) -> str:
    return f"{getattr(self.cell, 'name', type(self.cell).__name__).upper()}({self.units})"

  def init(self, key, input_shape: Shape):
    if len(input_shape) != 2:
      raise ValueError(f"{self._name}: expects inputs [batch, time, features], got a sample "
                       f"of shape {tuple(input_shape)} (without the batch axis)")
    time, features = input_shape[-2], input_shape[-1]
    params = self.cell.init(key, features, self.units)
    # The output's width is the cell's to say (usually `units`): read off one step's shape.
    y = jax.eval_shape(self.cell.step, params, self.cell.initial_carry(1, self.units),
                       jax.ShapeDtypeStruct((1, features), jnp.float32))[1]
    return params, ((time, y.shape[-1]) if self.return_sequences else (y.shape[-1],))

  def apply(self, params, x, mask=None, *, training=False, key=None, initial_carry=None,
            batch_axis_name=None):
    y, carry = recurrent.unroll(
        **self.unroll_kwargs(params, x, mask, training=training, key=key,
                             initial_carry=initial_carry, batch_axis_name=batch_axis_name),
        unroll=self.unroll)
    return self.outputs(y, carry, mask)

  def check_inputs(self, params, x, mask=None):
    """x as the unroll takes it: a ValueError in the user's terms for a wrong rank, a mask
    of the wrong shape, or params of another cell or size; integer and low-precision
    inputs are cast to the params' float type (Keras casts ints to its float32)."""
    if isinstance(x, recurrent.Embedded):
      batch_time, features = tuple(x.ids.shape), x.table.shape[-1]
    else:
      x = jnp.asarray(x)
      if x.ndim != 3:
        raise ValueError(f"{self._name}: expects inputs [batch, time, features], got shape "
                         f"{tuple(x.shape)}")
      batch_time, features = tuple(x.shape[:2]), x.shape[2]
    if mask is not None and tuple(jnp.shape(mask)) != batch_time:
      raise ValueError(f"{self._name}: the mask must be [batch, time] = {batch_time}, like the "
                       f"inputs, got shape {tuple(jnp.shape(mask))}")
    expected = jax.eval_shape(lambda: self.cell.init(jax.random.key(0), features, self.units))
    got = jax.tree.map(lambda a: jax.ShapeDtypeStruct(jnp.shape(a), jnp.result_type(a)), params)
    if jax.tree.structure(expected) != jax.tree.structure(got):
      raise ValueError(f"{self._name}: params of another layer: expected entries "
                       f"{_param_shapes(expected)}, got {_param_shapes(got)}")
    for path, want, have in zip(jax.tree_util.tree_leaves_with_path(expected),
                                jax.tree.leaves(expected), jax.tree.leaves(got)):
      if want.shape != have.shape:
        raise ValueError(f"{self._name} on {features} input features: params "
                         f"{jax.tree_util.keystr(path[0])} has shape {have.shape}, expected "
                         f"{want.shape} (params of another cell or size?)")
    if not isinstance(x, recurrent.Embedded):
      dtype = jnp.result_type(*jax.tree.leaves(params)) if jax.tree.leaves(params) else (
          jnp.float32)
      if not jnp.issubdtype(dtype, jnp.floating):
        dtype = jnp.float32
      if x.dtype != dtype:
        x = x.astype(dtype)
    return x

  def unroll_kwargs(self, params, x, mask=None, *, training=False, key=None,
                    initial_carry=None, batch_axis_name=None) -> dict:
    """The arguments of `recurrent.unroll` (but `unroll`) for this layer on x."""
    x = self.check_inputs(params, x, mask)
    return dict(cell=self.cell, params=params, inputs=x, units=self.units,
                initial_carry=initial_carry, implementation=self.implementation,
                method=self.method, batch_axis_name=batch_axis_name,
                mask=mask, go_backwards=self.go_backwards,
                return_sequences=self.return_sequences,
                zero_output_for_mask=self.zero_output_for_mask, dropout=self.dropout,
                recurrent_dropout=self.recurrent_dropout, training=training, key=key)

  def backend(self, dtype=None) -> backends.Backend:
    """The backend (`rnn_jax.backends`) that computes this layer in training on this
    platform, or a ValueError saying why its `implementation` cannot."""
    features = frozenset(name for name, rate in (("input_dropout", self.dropout),
                                                 ("recurrent_dropout", self.recurrent_dropout))
                         if rate > 0)
    return backends.resolve(self.cell, self.implementation, dtype=dtype, features=features)

  def outputs(self, y, carry, mask=None):
    """(layer output, output mask) from `recurrent.unroll`'s (y, carry)."""
    out_mask = mask if self.return_sequences else None
    if self.return_state:
      return (y, *jax.tree_util.tree_leaves(carry)), out_mask
    return y, out_mask


def SimpleRNN(units: int, activation="tanh", use_bias=True, **kwargs) -> RNN:
  return RNN(cells.simple_rnn(activation, use_bias), units, **kwargs)


def LSTM(units: int, activation="tanh", recurrent_activation="sigmoid", use_bias=True,
         unit_forget_bias=True, **kwargs) -> RNN:
  return RNN(cells.lstm(activation, recurrent_activation, use_bias, unit_forget_bias), units,
             **kwargs)


def GRU(units: int, activation="tanh", recurrent_activation="sigmoid", use_bias=True,
        reset_after=True, **kwargs) -> RNN:
  return RNN(cells.gru(activation, recurrent_activation, use_bias, reset_after), units,
             **kwargs)


def MGU(units: int, activation="tanh", recurrent_activation="sigmoid", reset_gate=True,
        **kwargs) -> RNN:
  return RNN(cells.mgu(activation, recurrent_activation, reset_gate), units, **kwargs)


def MinGRU(units: int, **kwargs) -> RNN:
  """minGRU (Feng et al. 2024): the whole sequence in one matmul and one linear scan."""
  return RNN(cells.min_gru(), units, **kwargs)


def MinLSTM(units: int, **kwargs) -> RNN:
  """minLSTM (Feng et al. 2024): the whole sequence in one matmul and one linear scan."""
  return RNN(cells.min_lstm(), units, **kwargs)


def _param_shapes(tree) -> str:
  return ", ".join(f"{jax.tree_util.keystr(path)} {leaf.shape}"
                   for path, leaf in jax.tree_util.tree_leaves_with_path(tree))


MERGE_MODES = ("concat", "sum", "mul", "ave", None)


@dataclasses.dataclass(frozen=True)
class Bidirectional:
  """Runs `layer` forwards and a copy of it backwards, and merges the two, as Keras does.

  The backward copy reads the reversed sequence (`go_backwards`); its sequence output is
  flipped back so both align in time. With `return_sequences`, masked steps output zeros
  (Keras sets `zero_output_for_mask` on both; `zero_output_for_mask=False` keeps the
  previous output instead, as Keras's `unroll=True` loop does). merge_mode None returns
  (forward, backward). With `return_state` the output is `(merged, *forward_state,
  *backward_state)` (`(forward, backward, *states)` for merge_mode None), as in Keras.
  """
  layer: RNN
  merge_mode: Optional[str] = "concat"
  backward_layer: Optional[RNN] = None
  zero_output_for_mask: bool = True
  takes_embedded: ClassVar[bool] = True  # see `Sequential`
  takes_batch_axis_name: ClassVar[bool] = True  # see `Sequential.apply`

  def __post_init__(self):
    for name in ("layer", "backward_layer"):
      layer = getattr(self, name)
      if not (isinstance(layer, RNN) or (name == "backward_layer" and layer is None)):
        raise TypeError(f"Bidirectional: {name} must be a recurrent layer (layers.RNN, e.g. "
                        f"layers.LSTM(32)), got {type(layer).__name__}")
    if self.merge_mode not in MERGE_MODES:
      raise ValueError(f"Bidirectional merge_mode {self.merge_mode!r} is not one of {MERGE_MODES}")
    if self.backward_layer is not None and (
        self.backward_layer.return_sequences != self.layer.return_sequences
        or self.backward_layer.return_state != self.layer.return_state):
      raise ValueError("Bidirectional: the backward layer's return_sequences and return_state "
                       "must equal the forward layer's")

  def _with_output_for_mask(self, layer: RNN) -> RNN:
    return dataclasses.replace(
        layer, zero_output_for_mask=layer.return_sequences and self.zero_output_for_mask)

  @property
  def forward(self) -> RNN:
    return self._with_output_for_mask(self.layer)

  @property
  def backward(self) -> RNN:
    layer = self.backward_layer or dataclasses.replace(
        self.layer, go_backwards=not self.layer.go_backwards)
    return self._with_output_for_mask(layer)

  def init(self, key, input_shape: Shape):
    k_f, k_b = jax.random.split(key)
    p_f, shape_f = self.forward.init(k_f, input_shape)
    p_b, shape_b = self.backward.init(k_b, input_shape)
    if self.merge_mode == "concat":
      shape = (*shape_f[:-1], shape_f[-1] + shape_b[-1])
    else:
      shape = shape_f
    return {"forward": p_f, "backward": p_b}, shape

  def apply(self, params, x, mask=None, *, training=False, key=None, batch_axis_name=None):
    k_f = k_b = None
    if key is not None:
      k_f, k_b = jax.random.split(key)
    # Both directions in one loop (see `recurrent.unroll_together`).
    forward, backward = self.forward, self.backward
    options = dict(training=training, batch_axis_name=batch_axis_name)
    (y_f, carry_f), (y_b, carry_b) = recurrent.unroll_together(
        [forward.unroll_kwargs(params["forward"], x, mask, key=k_f, **options),
         backward.unroll_kwargs(params["backward"], x, mask, key=k_b, **options)],
        unroll=forward.unroll)
    y_f, _ = forward.outputs(y_f, carry_f, mask)
    y_b, _ = backward.outputs(y_b, carry_b, mask)
    states = ()
    if self.layer.return_state:
      (y_f, *states_f), (y_b, *states_b) = y_f, y_b
      states = (*states_f, *states_b)
    if self.layer.return_sequences:
      y_b = jnp.flip(y_b, axis=1)
    out_mask = mask if self.layer.return_sequences else None
    if self.merge_mode is None:
      return (y_f, y_b, *states), out_mask
    merged = {
        "concat": lambda: jnp.concatenate([y_f, y_b], axis=-1),
        "sum": lambda: y_f + y_b,
        "mul": lambda: y_f * y_b,
        "ave": lambda: (y_f + y_b) / 2,
    }[self.merge_mode]()
    return ((merged, *states) if states else merged), out_mask


Layer = Any  # anything with init(key, input_shape) and apply(params, x, mask, *, training, key)


@dataclasses.dataclass(frozen=True)
class Sequential:
  """A stack of layers: `params = model.init(key, sample_input)`,
  `y = model.apply(params, x, training=False, key=None)`.

  Params are a tuple with one entry per layer. Each layer that draws random numbers
  gets `fold_in(key, layer_index)`. An `Embedding` followed by a recurrent layer hands
  it the table and the ids (`recurrent.Embedded`) rather than the looked-up vectors:
  the unroll projects the table once instead of every token at every step (the same
  values, half the loop's arithmetic).
  """
  layers: tuple

  def __init__(self, layers: Sequence[Layer]):
    for i, layer in enumerate(layers):  # a TypeError naming it, not an AttributeError later
      if not (callable(getattr(layer, "init", None)) and callable(getattr(layer, "apply", None))):
        raise TypeError(f"Sequential: layers[{i}] is {type(layer).__name__}, not a layer (an "
                        "object with init(key, input_shape) and apply(params, x, ...))")
    object.__setattr__(self, "layers", tuple(layers))

  def init(self, key, sample_input) -> tuple:
    shape = tuple(jnp.shape(sample_input))[1:]
    params = []
    for i, layer in enumerate(self.layers):
      p, shape = layer.init(jax.random.fold_in(key, i), shape)
      params.append(p)
    return tuple(params)

  def apply(self, params, x, *, training: bool = False, key=None, mask=None,
            batch_axis_name=None):
    """The stack's output. `batch_axis_name`: inside `shard_map`, the mesh axis the batch
    is split over, for the layers that draw dropout masks (`takes_batch_axis_name`): each
    shard then gets its rows of the whole batch's masks (`recurrent.dropout_mask`)."""
    following = self.layers[1:] + (None,)
    for i, (layer, p, after) in enumerate(zip(self.layers, params, following)):
      if isinstance(layer, Embedding) and getattr(after, "takes_embedded", False):
        x, mask = layer.apply_embedded(p, x, mask)
        continue
      layer_key = None if key is None else jax.random.fold_in(key, i)
      sharded = ({"batch_axis_name": batch_axis_name}
                 if batch_axis_name is not None and getattr(layer, "takes_batch_axis_name", False)
                 else {})
      x, mask = layer.apply(p, x, mask, training=training, key=layer_key, **sharded)
    return x


def recurrent_layers(model, where: str = "model"):
  """(where, layer) for every recurrent layer of `model` (a layer, a `Sequential`, or a
  wrapper holding one as `.model`), both directions of a `Bidirectional`."""
  if isinstance(model, Sequential):
    for i, layer in enumerate(model.layers):
      yield from recurrent_layers(layer, f"{where}.layers[{i}]")
  elif isinstance(model, Bidirectional):
    yield from recurrent_layers(model.forward, f"{where}.forward")
    yield from recurrent_layers(model.backward, f"{where}.backward")
  elif isinstance(model, RNN):
    yield where, model
  elif hasattr(model, "model"):  # e.g. precision.MixedPrecision
    yield from recurrent_layers(model.model, where)


def with_implementation(model, implementation):
  """`model` (a layer or a `Sequential`) with every recurrent layer's unroll
  `implementation` set (a backend's name or `backends.Backend`, see `rnn_jax.backends`),
  or, for a callable, set to implementation(the layer's own); other layers as they are."""
  if isinstance(model, Sequential):
    return Sequential([with_implementation(layer, implementation) for layer in model.layers])
  if isinstance(model, RNN):
    chosen = (implementation(model.implementation) if callable(implementation)
              else implementation)
    return dataclasses.replace(model, implementation=chosen)
  if isinstance(model, Bidirectional):
    backward = model.backward_layer and with_implementation(model.backward_layer, implementation)
    return dataclasses.replace(model, layer=with_implementation(model.layer, implementation),
                               backward_layer=backward)
  return model


RECURRENT_ACTIVATIONS = ("tanh", "relu", "leaky_relu", "elu", "sigmoid")
