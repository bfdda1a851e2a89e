"""The "pallas" backend: its kernels in interpret mode equal "scan" in values and gradients
(1e-5) for every cell it computes and every feature; `jax.export` lowers a train step
using them for CUDA (Triton) and TPU (Mosaic) on this CPU machine.

The default run takes a few cases (interpret mode is slow); `-m slow` runs every cell with
every feature, through the default blocks and through small ones (several blocks of rows,
padded rows, several blocks of steps: the TPU's cut), and exports every cell.
tests/test_backends.py holds "pallas" to "scan" too, in its equality matrix.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import assert_trees_close, ragged_mask
from rnn_jax import backends, cells, layers, recurrent
from rnn_jax.backends import gate_blocks, pallas, pallas_gated
from rnn_jax.cells.base import GatedCell, Gates, init_kernels, zeros_carry

BATCH, TIME, FEATURES, UNITS = 5, 8, 3, 4


def _user_gated_cell():
  """A user's gated cell: f = sigmoid(x W_f + h U_f), n = tanh(x W_n + f * (h U_n) + c),
  h' = (1 - f) n + f h, with a recurrent bias row c of its own."""

  def init(key, input_size, units, dtype=jnp.float32):
    return {**init_kernels(key, input_size, units, 2, dtype),
            "bias": jnp.linspace(-0.5, 0.5, 2 * units, dtype=dtype),
            "recurrent_bias": jnp.linspace(0.2, -0.2, units, dtype=dtype)}

  def recurrence(params, h, xw_t, matmuls):
    x_f, x_n = jnp.split(xw_t, 2, axis=-1)
    h_f, h_n = matmuls(h, params["recurrent_kernel"])
    f = jax.nn.sigmoid(x_f + h_f)
    h = (1 - f) * jnp.tanh(x_n + f * h_n + params["recurrent_bias"]) + f * h
    return h, h

  gates = Gates(2, lambda p: (p["kernel"], p["bias"]), recurrence, lambda h: h)
  return GatedCell("user_gated", init, zeros_carry, gates)


CELLS = {"simple_rnn": cells.simple_rnn(), "lstm": cells.lstm(), "gru": cells.gru(),
         "gru_reset_before": cells.gru(reset_after=False), "user_gated": _user_gated_cell(),
         "min_gru": cells.min_gru(), "min_lstm": cells.min_lstm()}
GATED = ("simple_rnn", "lstm", "gru", "gru_reset_before", "user_gated")

# The TPU's cut in interpret mode: blocks of 2 rows (5 padded to 6), of 2 steps (4 blocks of
# the sequence, the state and the cotangents crossing them), of 2 units (minGRU, minLSTM).
SMALL_BLOCKS = pallas.backend("pallas_small_blocks",
                              blocks={"interpret": pallas.Blocks(batch=2, time=3, units=2)})
VARIANTS = {"pallas": "pallas", "small_blocks": SMALL_BLOCKS}

CASES = {
    "mask": dict(mask=True, return_sequences=True, zero_output_for_mask=True),
    "last_output": dict(mask=True),
    "go_backwards": dict(mask=True, go_backwards=True, return_sequences=True),
    "input_dropout": dict(dropout=0.3, mask=True, return_sequences=True),
    "recurrent_dropout": dict(recurrent_dropout=0.4, mask=True),
    "initial_carry": dict(initial_carry=True, return_sequences=True),
    "all": dict(mask=True, go_backwards=True, dropout=0.3, recurrent_dropout=0.4,
                initial_carry=True, return_sequences=True),
    "bidirectional": dict(layer=True, mask=True, dropout=0.2, recurrent_dropout=0.3),
}


def _params(cell_name):
  params = CELLS[cell_name].init(jax.random.PRNGKey(1), FEATURES, UNITS)
  # Nonzero biases, so that their gradients and both branches of minGRU's g are met.
  return jax.tree_util.tree_map_with_path(
      lambda path, a: a + 0.3 * jnp.sin(jnp.arange(a.size, dtype=a.dtype)).reshape(a.shape)
      if "bias" in jax.tree_util.keystr(path) else a, params)


def _weighted(tree):
  return sum(jnp.sum(jnp.sin(jnp.arange(leaf.size, dtype=leaf.dtype)).reshape(leaf.shape) * leaf)
             for leaf in jax.tree.leaves(tree))


def _value_and_grads(cell_name, implementation, case):
  """A loss of every output and the final carry, and its gradients with respect to the
  parameters, the inputs and (unroll) the initial carry."""
  cell, options = CELLS[cell_name], dict(CASES[case])
  if cell_name not in GATED:
    options.pop("recurrent_dropout", None)  # a linear cell has no recurrent weights
  mask = jnp.asarray(ragged_mask(BATCH, TIME)) if options.pop("mask", False) else None
  x = jnp.asarray(np.random.RandomState(0).randn(BATCH, TIME, FEATURES).astype(np.float32))
  key = jax.random.PRNGKey(7)
  if options.pop("layer", False):
    model = layers.Sequential([layers.Bidirectional(layers.RNN(
        cell, UNITS, implementation=implementation, return_sequences=True,
        dropout=options["dropout"], recurrent_dropout=options.get("recurrent_dropout", 0.0)))])
    params = model.init(jax.random.PRNGKey(1), x)
    loss = lambda p, x: _weighted(model.apply(p, x, mask=mask, training=True, key=key))
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(params, x)
  carry = None
  if options.pop("initial_carry", False):
    carry = jax.tree.map(lambda z: z + 0.3 + 0.1 * jnp.cos(jnp.arange(z.size).reshape(z.shape)),
                         cell.initial_carry(BATCH, UNITS))

  def loss(params, x, carry):
    y, final = recurrent.unroll(cell, params, x, units=UNITS, mask=mask, initial_carry=carry,
                                implementation=implementation, training=True, key=key,
                                **options)
    return _weighted(y) + _weighted(jax.tree.map(jnp.cos, final))
  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(_params(cell_name), x, carry)


@functools.lru_cache(maxsize=None)
def _reference(cell_name, case):
  return jax.device_get(_value_and_grads(cell_name, "scan", case))


def _check(cell_name, variant, case):
  got = _value_and_grads(cell_name, VARIANTS[variant], case)
  assert_trees_close(got, _reference(cell_name, case), 1e-5)
  assert np.isfinite(float(got[0])) and float(jnp.abs(got[0])) > 0


DEFAULT = [("gru_reset_before", "small_blocks", "all"), ("min_lstm", "pallas", "bidirectional")]
SLOW = [(c, v, k) for c in CELLS for v in VARIANTS for k in CASES if (c, v, k) not in DEFAULT]


@pytest.mark.parametrize("cell_name,variant,case", DEFAULT)
def test_kernels_equal_the_scan(cell_name, variant, case):
  _check(cell_name, variant, case)


@pytest.mark.slow
@pytest.mark.parametrize("cell_name,variant,case", SLOW)
def test_kernels_equal_the_scan_every_cell_and_feature(cell_name, variant, case):
  _check(cell_name, variant, case)


@pytest.mark.parametrize("cell_name", ["gru", "min_gru"])
def test_without_a_gradient_the_kernels_keep_only_the_last_state(cell_name):
  # Not differentiated and without return_sequences, the forward kernel writes the final
  # state alone (no states for a backward pass): the same outputs as the scan.
  x = jnp.asarray(np.random.RandomState(2).randn(BATCH, TIME, FEATURES).astype(np.float32))
  mask = jnp.asarray(ragged_mask(BATCH, TIME))
  outputs = {implementation: jax.jit(lambda p, x, i=implementation: recurrent.unroll(
      CELLS[cell_name], p, x, units=UNITS, mask=mask, implementation=i))(
          _params(cell_name), x) for implementation in (SMALL_BLOCKS, "scan")}
  assert_trees_close(outputs[SMALL_BLOCKS], outputs["scan"])
  closed = jax.make_jaxpr(lambda p, x: recurrent.unroll(
      CELLS[cell_name], p, x, units=UNITS, mask=mask, implementation="pallas"))(
          _params(cell_name), x)
  calls = _pallas_calls(closed.jaxpr)
  assert calls and all(len(v.aval.shape) == 2 for eqn in calls for v in eqn.outvars)


def _pallas_calls(jaxpr) -> list:
  """The pallas_call equations in a jaxpr and its sub-jaxprs."""
  from jax.extend import core as jcore  # pylint: disable=import-outside-toplevel
  found = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "pallas_call":
      found.append(eqn)
    for sub in jcore.jaxprs_in_params(eqn.params):
      found += _pallas_calls(sub)
  return found


def test_linear_recurrence_and_its_gradient_equal_the_sequential_scan():
  rng = np.random.RandomState(3)
  a, b = (jnp.asarray(rng.rand(7, 3, 8).astype(np.float32)) for _ in range(2))
  h0 = jnp.asarray(rng.randn(3, 8).astype(np.float32))

  def reference(a, b, h0):
    def step(h, ab):
      h = ab[0] * h + ab[1]
      return h, h
    return jax.lax.scan(step, h0, (a, b))[1]

  small = {"interpret": pallas.Blocks(batch=2, time=3, units=4)}  # 2 x 2 x 7 blocks
  for blocks in (None, small):
    run = functools.partial(pallas.linear_recurrence, blocks=blocks)
    assert_trees_close(run(a, b, h0), reference(a, b, h0))
    loss = lambda f: lambda *args: jnp.sum(jnp.sin(f(*args)))
    assert_trees_close(jax.grad(loss(run), argnums=(0, 1, 2))(a, b, h0),
                       jax.grad(loss(reference), argnums=(0, 1, 2))(a, b, h0))


# ----------------------------------------------------------------------------- gate blocks

@pytest.mark.parametrize("cell_name", GATED)
def test_each_cells_step_runs_on_gate_blocks_as_triton_needs(cell_name):
  # At 32 units and Triton's 16 rows, the step and its vjp evaluate on per-gate blocks with
  # no slice, concatenation or non-power-of-two shape, and give the plain values.
  cell = CELLS[cell_name]
  params = cell.init(jax.random.PRNGKey(0), FEATURES, 32)
  carry = cell.initial_carry(16, 32)
  layer = pallas_gated._Gated(cell.gates, 32, cell.gates.num_gates,
                        jax.tree.structure(params), jax.tree.structure(carry),
                        tuple(c.shape[-1] for c in jax.tree.leaves(carry)),
                        cell.gates.num_gates, True, True, 10, 16, jnp.float32, pallas.BLOCKS,
                        None)
  kernels = pallas_gated._gated_kernels(layer, "gpu", jax.tree.leaves(params))
  assert kernels.triton_problems() == []
  # The split moved every slice of the parameters out of the loop: the kernel's weights are
  # the per-gate recurrent kernels (and GRU's recurrent bias rows).
  assert all(a.shape[-1] == 32 for a in kernels.step.residual_avals)
  rng = np.random.RandomState(1)
  residuals = kernels.step.prepare(jax.tree.leaves(params))
  rest = [jnp.asarray(rng.randn(*a.shape).astype(np.float32))
          for a in kernels.step.core.in_avals[len(residuals):]]
  plain = gate_blocks.core_function(kernels.step)(*residuals, *rest)
  xw = rest[len(jax.tree.leaves(carry))]
  gated = [*rest[:len(jax.tree.leaves(carry))],
           gate_blocks.blocked(jnp.split(xw, cell.gates.num_gates, axis=-1), 1),
           *rest[len(jax.tree.leaves(carry)) + 1:]]
  stats = gate_blocks.Stats()
  on_blocks = gate_blocks.evaluate(kernels.step.core, [*residuals, *gated], stats=stats)
  assert stats.whole == []
  for got, expected in zip(on_blocks, plain):
    np.testing.assert_allclose(gate_blocks.whole(got), expected, rtol=1e-6, atol=1e-6)


def test_what_the_blocks_cannot_keep_is_computed_whole_and_counted():
  # A split inside a gate's block: exact, but computed on the whole array (not for Triton).
  x = gate_blocks.Blocked([jnp.arange(4.0).reshape(1, 4), 10 + jnp.arange(4.0).reshape(1, 4)],
                          1)
  closed = jax.make_jaxpr(lambda v: jnp.split(v, 4, axis=-1)[1] * 2)(jnp.zeros((1, 8)))
  stats = gate_blocks.Stats()
  [out] = gate_blocks.evaluate(closed, [x], stats=stats)
  np.testing.assert_array_equal(out, [[4.0, 6.0]])
  assert stats.whole == ["split"]
  assert "split into unequal or not a power of two of parts" in gate_blocks.triton_problems(
      jax.make_jaxpr(lambda v: jnp.split(v, 3, axis=-1))(jnp.zeros((4, 6))))


# ----------------------------------------------------------------------------- lowering

def _train_step(rnn):
  """value_and_grad of a loss over [rnn, Dense(1)] and an SGD update, jitted, with its
  arguments (batch 32, 12 steps, 8 features, a ragged mask, dropout's key)."""
  model = layers.Sequential([rnn, layers.Dense(1)])
  x = jnp.ones((32, 12, 8))
  y = jnp.ones((32, 1))
  mask = jnp.asarray(ragged_mask(32, 12))
  params = model.init(jax.random.PRNGKey(0), x)

  def step(params, x, y, mask, key):
    def loss(params):
      return jnp.mean((model.apply(params, x, mask=mask, training=True, key=key) - y) ** 2)
    value, grads = jax.value_and_grad(loss)(params)
    return value, jax.tree.map(lambda p, g: p - 0.01 * g, params, grads)

  return jax.jit(step), (params, x, y, mask, jax.random.PRNGKey(1))


# Triton's IR is not one of jax.export's stable custom calls (jax/_src/export/_export.py):
# a serialized artifact holds only for the jaxlib that wrote it, so the check is turned off
# by name. Mosaic TPU's custom call is stable.
_TRITON = "__gpu$xla.gpu.triton"
_EXPORT = {"cuda": ([jax.export.DisabledSafetyCheck.custom_call(_TRITON)], _TRITON),
           "tpu": ([], "tpu_custom_call")}


def _lowered(rnn, platform):
  step, args = _train_step(rnn)
  checks, _ = _EXPORT[platform]
  return jax.export.export(step, platforms=[platform], disabled_checks=checks)(*args)


@pytest.mark.parametrize("platform", ["cuda", "tpu"])
def test_a_train_step_exports_for_gpu_and_tpu_from_this_cpu(platform):
  # A forward and a backward kernel in the module: the kernels lowered (Pallas to Triton's
  # IR or to Mosaic), not a fallback. Compiling that IR is the device's compiler's work.
  rnn = layers.LSTM(32, implementation="pallas", dropout=0.1, recurrent_dropout=0.2)
  text = _lowered(rnn, platform).mlir_module()
  assert text.count(f"@{_EXPORT[platform][1]}(") == 2
  assert "stablehlo.while" not in text  # no scan over time left outside the kernels


def test_triton_needs_its_ir_allowed_by_name():
  step, args = _train_step(layers.GRU(32, implementation="pallas"))
  with pytest.raises(ValueError, match="custom calls whose targets have no compatibility"):
    jax.export.export(step, platforms=["cuda"])(*args)


def test_a_layer_triton_cannot_take_runs_as_a_scan_on_gpu():
  # 24 units: Triton takes only powers of two. The GPU branch is then the scan of the step
  # (what "fused" computes); the TPU keeps its kernels.
  rnn = layers.GRU(24, implementation="pallas")
  cuda = _lowered(rnn, "cuda").mlir_module()
  assert _TRITON not in cuda and "stablehlo.while" in cuda
  assert _lowered(rnn, "tpu").mlir_module().count("@tpu_custom_call(") == 2


@pytest.mark.slow
@pytest.mark.parametrize("platform", ["cuda", "tpu"])
@pytest.mark.parametrize("kind", ["simple_rnn", "gru", "gru_reset_before", "user_gated",
                                  "min_gru", "min_lstm", "bidirectional_lstm"])
def test_every_cells_train_step_exports(kind, platform):
  def rnn(cell, **options):
    return layers.RNN(cell, 32, implementation="pallas", **options)
  gated = dict(dropout=0.1, recurrent_dropout=0.2)
  layer = {"simple_rnn": lambda: rnn(cells.simple_rnn(), **gated),
           "gru": lambda: rnn(cells.gru(), **gated),
           "gru_reset_before": lambda: rnn(cells.gru(reset_after=False), **gated),
           "user_gated": lambda: rnn(_user_gated_cell(), **gated),
           "min_gru": lambda: rnn(cells.min_gru(), dropout=0.1),
           "min_lstm": lambda: rnn(cells.min_lstm()),
           "bidirectional_lstm": lambda: layers.Bidirectional(rnn(cells.lstm(), **gated)),
           }[kind]()
  text = _lowered(layer, platform).mlir_module()
  kernels = 4 if kind.startswith("bidirectional") else 2
  assert text.count(f"@{_EXPORT[platform][1]}(") == kernels


# ----------------------------------------------------------------------------- the declaration

def test_what_the_backend_declares():
  assert "pallas" in backends.names() and backends.get("pallas") is pallas.PALLAS
  assert all("pallas" not in order for order in backends.AUTO.values())  # opt-in
  for platform in ("cpu", "gpu", "tpu"):
    assert backends.resolve(CELLS["lstm"], "pallas", platform=platform) is pallas.PALLAS
  with pytest.raises(ValueError, match="declares neither"):
    backends.resolve(cells.mgu(), "pallas", platform="gpu")
  with pytest.raises(ValueError, match="float32, not bfloat16"):
    backends.resolve(CELLS["gru"], "pallas", platform="gpu", dtype=jnp.bfloat16)
  # An artifact of rnn_jax.io.export has a symbolic batch, which the kernels' grid cannot take.
  assert not pallas.PALLAS.exportable
  compiled_only = pallas.backend("pallas_compiled", interpret=False)
  assert compiled_only.platforms == ("gpu", "tpu")
  with pytest.raises(ValueError, match="not on cpu"):
    backends.resolve(CELLS["lstm"], compiled_only, platform="cpu")
