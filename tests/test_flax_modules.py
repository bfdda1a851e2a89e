"""rnn_jax cells as Flax modules: `nn.RNN` and `nnx.RNN` over a wrapped cell equal
rnn_jax's layers with the same parameters; and `import rnn_jax` does not import Flax.
(The guide's Flax example, docs/guide/flax.md, is run and checked by test_docs.)"""
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnn_jax import cells, layers

flax_modules = pytest.importorskip("rnn_jax.interop.flax")
import flax.linen as nn  # pylint: disable=wrong-import-position
from flax import nnx  # pylint: disable=wrong-import-position

REPO = pathlib.Path(__file__).resolve().parent.parent
CASES = [("gru", cells.gru, layers.GRU), ("gru_reset_before", lambda: cells.gru(reset_after=False),
                                          lambda u, **kw: layers.GRU(u, reset_after=False, **kw)),
         ("lstm", cells.lstm, layers.LSTM), ("simple_rnn", cells.simple_rnn, layers.SimpleRNN),
         ("mgu", cells.mgu, layers.MGU)]


@pytest.mark.parametrize("name, make_cell, make_layer", CASES, ids=[c[0] for c in CASES])
def test_linen_rnn_equals_the_layer(name, make_cell, make_layer):
  x = jax.random.normal(jax.random.key(1), (3, 9, 5))
  rnn = nn.RNN(flax_modules.LinenCell(make_cell(), 6))
  variables = rnn.init(jax.random.key(0), x)
  params = variables["params"]["cell"]
  assert set(params) == set(make_cell().init(jax.random.key(0), 5, 6))  # rnn_jax's names
  y, _ = make_layer(6, return_sequences=True).apply(params, x)
  np.testing.assert_allclose(rnn.apply(variables, x), y, atol=1e-6, rtol=0)


@pytest.mark.parametrize("name, make_cell, make_layer", CASES, ids=[c[0] for c in CASES])
def test_nnx_rnn_equals_the_layer(name, make_cell, make_layer):
  x = jax.random.normal(jax.random.key(1), (3, 9, 5))
  cell = flax_modules.NnxCell(make_cell(), 5, 6, rngs=nnx.Rngs(0))
  assert set(nnx.state(cell, nnx.Param)) == set(make_cell().init(jax.random.key(0), 5, 6))
  y, _ = make_layer(6, return_sequences=True).apply(cell.cell_params, x)
  np.testing.assert_allclose(nnx.RNN(cell)(x), y, atol=1e-6, rtol=0)


def test_a_users_own_cell_drops_into_nn_rnn():
  import types

  def init(key, input_size, units):
    return {"w": jax.random.normal(key, (input_size, units)), "b": jnp.zeros((units,))}

  def initial_carry(batch_size, units, dtype=jnp.float32):
    batch_shape = (batch_size,) if isinstance(batch_size, int) else tuple(batch_size)
    return jnp.zeros((*batch_shape, units), dtype)

  def step(params, h, x_t):
    h = jnp.tanh(x_t @ params["w"] + h + params["b"])
    return h, h

  cell = types.SimpleNamespace(init=init, initial_carry=initial_carry, step=step)
  x = jnp.ones((2, 4, 3))
  rnn = nn.RNN(flax_modules.LinenCell(cell, 5))
  variables = rnn.init(jax.random.key(0), x)
  y, _ = layers.RNN(cell, 5, return_sequences=True).apply(variables["params"]["cell"], x)
  np.testing.assert_allclose(rnn.apply(variables, x), y, atol=1e-6)


def test_import_rnn_jax_does_not_import_flax():
  done = subprocess.run(
      [sys.executable, "-c", "import sys, rnn_jax, rnn_jax.layers, rnn_jax.train, "
       "rnn_jax.io.predictor, rnn_jax.io.export; print(sorted(m for m in sys.modules if "
       "m.split('.')[0] == 'flax'))"], capture_output=True, text=True, timeout=300,
      cwd=REPO)
  assert done.returncode == 0, done.stderr[-2000:]
  assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("make, pattern", [
    (lambda: flax_modules.LinenCell(cells.gru(), 0),
     r"LinenCell\(gru, units=0\): units must be a positive integer, got 0"),
    (lambda: flax_modules.LinenCell(cells.gru(), 2.5),
     r"LinenCell\(gru, units=2\.5\): units must be a positive integer"),
    (lambda: flax_modules.NnxCell(cells.gru(), 3, 0, rngs=nnx.Rngs(0)),
     r"NnxCell\(gru, in_features=3, units=0\): units must be a positive integer, got 0"),
    (lambda: flax_modules.NnxCell(cells.gru(), 0, 4, rngs=nnx.Rngs(0)),
     r"NnxCell\(gru, in_features=0, units=4\): in_features must be a positive integer"),
], ids=["linen_units_0", "linen_units_float", "nnx_units_0", "nnx_in_features_0"])
def test_wrappers_check_their_sizes_when_built(make, pattern):
  """issue 26: units=0 was a ZeroDivisionError inside the cell's init."""
  with pytest.raises(ValueError, match=pattern):
    make()


def test_wrappers_refuse_what_is_not_a_cell():
  with pytest.raises(TypeError, match=r"LinenCell\(str, units=4\): str is not a cell: it lacks "
                                      r"init, initial_carry, step"):
    flax_modules.LinenCell("gru", 4)


def test_nnx_cell_checks_the_input_width_against_in_features():
  """issue 26: inputs of another width than in_features were not checked."""
  rnn = nnx.RNN(flax_modules.NnxCell(cells.gru(), 3, 4, rngs=nnx.Rngs(0)))
  assert rnn(jnp.ones((2, 5, 3))).shape == (2, 5, 4)
  with pytest.raises(ValueError, match=r"NnxCell\(gru, in_features=3, units=4\): inputs have 5 "
                                       r"features, expected in_features=3"):
    rnn(jnp.ones((2, 5, 5)))


def test_nnx_cell_needs_rngs():
  with pytest.raises(TypeError, match=r"NnxCell\(gru, in_features=3, units=4\): rngs must be an "
                                      r"nnx\.Rngs"):
    flax_modules.NnxCell(cells.gru(), 3, 4, rngs=0)
