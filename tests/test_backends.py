"""The equality matrix: every cell through every backend that computes it, for every
feature of the unroll, equals "scan" (autodiff of `lax.scan` over the cell's step) in
values and gradients (parameters, inputs, initial carry) to 1e-5; "parallel" to its
Newton tolerance, 1e-4.

Cells: Keras's SimpleRNN, LSTM, GRU (both reset forms), MGU, minGRU, minLSTM, a user's
cell of three plain functions, and a user's cell that declares a gate layout. Backends:
every registered one that computes the cell on this platform, a toy backend a user
registers here (a Python loop), and cuDNN's packing through `jax.experimental.rnn.lstm_ref`.
The default run takes every (cell, backend) pair with every feature at once and with
none, and every feature alone for one cell of each kind per backend; `-m slow` runs the
whole cross product.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import assert_trees_close, ragged_mask, two_state_cell
from rnn_jax import backends, cells, layers, recurrent
from rnn_jax.backends import Backend, cudnn, loop, per_gate
from rnn_jax.cells.base import GatedCell, Gates, init_kernels, zeros_carry

BATCH, TIME, FEATURES, UNITS, VOCAB = 5, 6, 3, 5, 9


# ----------------------------------------------------------------------------- user cells

def _coupled_gate_cell():
  """A user's gated cell (`cells.Gates`): f = sigmoid(x W_f + h U_f), n = tanh(x W_n +
  f * h U_n), h' = (1 - f) n + f h."""

  def init(key, input_size, units, dtype=jnp.float32):
    return {**init_kernels(key, input_size, units, 2, dtype),
            "bias": jnp.linspace(-0.5, 0.5, 2 * units, dtype=dtype)}

  def recurrence(params, h, xw_t, matmuls):
    x_f, x_n = jnp.split(xw_t, 2, axis=-1)
    h_f, h_n = matmuls(h, params["recurrent_kernel"])
    f = jax.nn.sigmoid(x_f + h_f)
    h = (1 - f) * jnp.tanh(x_n + f * h_n) + f * h
    return h, h

  gates = Gates(2, lambda p: (p["kernel"], p["bias"]), recurrence, lambda h: h)
  return GatedCell("coupled_gate", init, zeros_carry, gates)


CELLS = {
    "simple_rnn": cells.simple_rnn(), "lstm": cells.lstm(), "gru": cells.gru(),
    "gru_reset_before": cells.gru(reset_after=False), "mgu": cells.mgu(),
    "min_gru": cells.min_gru(), "min_lstm": cells.min_lstm(),
    "user_two_state": two_state_cell(), "user_gated": _coupled_gate_cell(),
}


# ----------------------------------------------------------------------------- backends

def _python_loop(recurrence):
  """A user's backend: the recurrence as a Python loop over time (unrolled by tracing)."""
  x = recurrence.dropped_inputs()
  state, ys = recurrence.initial_state, []
  for t in range(x.shape[0]):
    new, _ = recurrence.step(recurrence.params, state, x[t])
    state = new if recurrence.mask is None else loop.keep_where(recurrence.mask[t], new, state)
    ys.append(recurrence.output(state))
  return (jnp.stack(ys) if recurrence.return_sequences else None), state


TOY = backends.register(Backend("toy_python_loop", "a Python loop over time (a test's)",
                                features=frozenset({"mask", "input_dropout"}),
                                run=_python_loop))
CUDNN_REFERENCE = cudnn.backend("cudnn_reference", lstm=cudnn.reference_lstm, platforms=None)
BACKENDS = {**{name: backends.get(name) for name in backends.names()[1:] if name != "scan"},
            "cudnn_reference": CUDNN_REFERENCE}
TOLERANCE = {"parallel": 1e-4}


def _computes(cell_name: str, backend_name: str) -> bool:
  return BACKENDS[backend_name].why_not(CELLS[cell_name], platform="cpu") is None


# ----------------------------------------------------------------------------- features

def _mask(kind: str, time: int) -> np.ndarray:
  lengths = np.array([time, max(time - 2, 1), 1, 0, time // 2])[:BATCH]
  steps = np.arange(time)
  if kind == "trailing":  # right-padded rows, one without a real step
    return steps[None] < lengths[:, None]
  if kind == "leading":
    return steps[None] >= time - lengths[:, None]
  if kind == "inner":
    mask = np.ones((BATCH, time), bool)
    mask[0, time // 2] = mask[1, 1:time - 1] = False
    return mask
  return ragged_mask(BATCH, time)


# Each case: unroll options, plus mask=, time=, embedded=, initial_carry=, layer=.
CASES = {
    "none": dict(),
    "mask_trailing": dict(mask="trailing", return_sequences=True),
    "mask_leading": dict(mask="leading", return_sequences=True),
    "mask_inner": dict(mask="inner", return_sequences=True),
    "last_output_masked": dict(mask="ragged"),
    "go_backwards": dict(mask="ragged", go_backwards=True, return_sequences=True),
    "input_dropout": dict(dropout=0.3, return_sequences=True),
    "recurrent_dropout": dict(recurrent_dropout=0.4, mask="ragged"),
    "initial_carry": dict(initial_carry=True, mask="leading", return_sequences=True),
    "zero_output_for_mask": dict(mask="ragged", return_sequences=True,
                                 zero_output_for_mask=True),
    "embedded": dict(embedded=True, mask="ragged", return_sequences=True),
    "length_1": dict(time=1, mask="ragged", return_sequences=True),
    "length_0": dict(time=0, initial_carry=True),
    "return_state": dict(layer="return_state", mask="ragged"),
    "bidirectional": dict(layer="bidirectional", mask="ragged", dropout=0.2),
    "stacked": dict(layer="stacked", mask="ragged", dropout=0.2),
    # Several features at once: what the default run takes.
    "all": dict(mask="ragged", go_backwards=True, dropout=0.3, recurrent_dropout=0.4,
                initial_carry=True, return_sequences=True, embedded=True),
    "last_zero_output": dict(mask="ragged", zero_output_for_mask=True, initial_carry=True),
    "layers": dict(layer="layers", mask="ragged", dropout=0.2),
}
# The default run: "all" for every (cell, backend), these for one cell per backend.
DEFAULT_CASES = ("last_zero_output", "layers", "length_1", "length_0")


def _applies(cell_name: str, backend_name: str, case: str) -> bool:
  """Recurrent dropout needs a gate layout and a backend that computes it; the rest runs
  everywhere (the "all" case leaves out what does not apply)."""
  if "recurrent_dropout" not in CASES[case] or case == "all":
    return True
  return (recurrent.gates_of(CELLS[cell_name]) is not None
          and "recurrent_dropout" in BACKENDS[backend_name].features)


def _options(cell_name, backend_name, case) -> dict:
  options = dict(CASES[case])
  if case == "all" and not _applies(cell_name, backend_name, "recurrent_dropout"):
    del options["recurrent_dropout"]
  return options


# ----------------------------------------------------------------------------- the check

def _data(time: int):
  rng = np.random.RandomState(time)
  x = jnp.asarray(rng.randn(BATCH, time, FEATURES).astype(np.float32))
  table = jnp.asarray(rng.randn(VOCAB, FEATURES).astype(np.float32))
  ids = jnp.asarray(rng.randint(0, VOCAB, (BATCH, time)).astype(np.int32))
  return x, table, ids


def _params(cell_name):
  cell = CELLS[cell_name]
  params = cell.init(jax.random.PRNGKey(1), FEATURES, UNITS)
  # Nonzero biases, so that their gradients and both branches of minGRU's g are exercised.
  return jax.tree_util.tree_map_with_path(
      lambda path, a: a + 0.3 * jnp.sin(jnp.arange(a.size, dtype=a.dtype)).reshape(a.shape)
      if "bias" in jax.tree_util.keystr(path) else a, params)


def _layer_model(cell, backend, kind, dropout, recurrent_dropout):
  rnn = functools.partial(layers.RNN, cell, UNITS, implementation=backend, dropout=dropout,
                          recurrent_dropout=recurrent_dropout)
  if kind == "return_state":
    return layers.Sequential([rnn(return_state=True)])
  if kind == "bidirectional":
    return layers.Sequential([layers.Bidirectional(rnn(return_sequences=True)),
                              layers.Flatten()])
  if kind == "stacked":
    return layers.Sequential([rnn(return_sequences=True), rnn(go_backwards=True)])
  return layers.Sequential([layers.Bidirectional(rnn(return_sequences=True)),
                            rnn(go_backwards=True, return_state=True)])


def _value_and_grads(cell_name, backend, case, options):
  """The loss (every output and the final carry, weighted) and its gradients with respect
  to the parameters, the inputs (or the embedding table) and the initial carry."""
  cell = CELLS[cell_name]
  options = dict(options)
  time = options.pop("time", TIME)
  mask = options.pop("mask", None)
  mask = None if mask is None else jnp.asarray(_mask(mask, time))
  embedded = options.pop("embedded", False)
  with_carry = options.pop("initial_carry", False)
  kind = options.pop("layer", None)
  x, table, ids = _data(time)
  inputs = table if embedded else x
  key = jax.random.PRNGKey(7)

  def weighted(tree):
    return sum(jnp.sum(jnp.sin(jnp.arange(leaf.size, dtype=leaf.dtype)).reshape(leaf.shape)
                       * leaf) for leaf in jax.tree.leaves(tree))

  if kind is not None:
    model = _layer_model(cell, backend, kind, options.get("dropout", 0.0),
                         options.get("recurrent_dropout", 0.0))
    params = model.init(jax.random.PRNGKey(1), x)

    def loss(params, x):
      return weighted(model.apply(params, x, mask=mask, training=True, key=key))
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(params, x)

  carry = (jax.tree.map(lambda z: z + 0.3 + 0.1 * jnp.cos(jnp.arange(z.size).reshape(z.shape)),
                        cell.initial_carry(BATCH, UNITS)) if with_carry else None)

  def loss(params, inputs, carry):
    given = recurrent.Embedded(inputs, ids) if embedded else inputs
    y, final = recurrent.unroll(cell, params, given, units=UNITS, mask=mask,
                                initial_carry=carry, implementation=backend, training=True,
                                key=key, **options)
    return weighted(y) + weighted(jax.tree.map(jnp.cos, final))
  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(_params(cell_name), inputs, carry)


@functools.lru_cache(maxsize=None)
def _reference(cell_name, options_key):
  return jax.device_get(_value_and_grads(cell_name, "scan", None, dict(options_key)))


def _check(cell_name, backend_name, case):
  options = _options(cell_name, backend_name, case)
  got = _value_and_grads(cell_name, BACKENDS[backend_name], case, options)
  expected = _reference(cell_name, tuple(sorted(options.items())))
  assert_trees_close(got, expected, TOLERANCE.get(backend_name, 1e-5))
  assert np.isfinite(float(got[0]))


# Every feature alone with one cell of each kind per backend: an LSTM where the backend
# computes it, else minGRU; and the users' cells through the backends that take any cell.
def _representatives(backend_name):
  for cell_name in ("lstm", "min_gru", "user_two_state"):
    if _computes(cell_name, backend_name):
      return cell_name
  return None


def _matrix():
  default, slow = [], []
  for backend_name in BACKENDS:
    representative = _representatives(backend_name)
    for cell_name in CELLS:
      if not _computes(cell_name, backend_name):
        continue
      for case in CASES:
        if not _applies(cell_name, backend_name, case):
          continue
        cheap = case == "all" or cell_name == representative and case in DEFAULT_CASES
        if backend_name == "pallas":  # interpret mode is slow: tests/test_pallas.py has more
          cheap = case == "all" and cell_name in ("lstm", "min_gru")
        if backend_name == "parallel":  # Newton's Jacobians compile slowly: fewer by default
          cheap = (case == "none" or cell_name in ("simple_rnn", "min_gru", "user_two_state")
                   and case in ("all", "last_zero_output", "length_1", "length_0"))
        (default if cheap else slow).append((cell_name, backend_name, case))
  return default, slow


DEFAULT, SLOW = _matrix()


@pytest.mark.parametrize("cell_name,backend_name,case", DEFAULT)
def test_backend_equals_scan(cell_name, backend_name, case):
  _check(cell_name, backend_name, case)


@pytest.mark.slow
@pytest.mark.parametrize("cell_name,backend_name,case", SLOW)
def test_backend_equals_scan_whole_matrix(cell_name, backend_name, case):
  _check(cell_name, backend_name, case)


def test_the_matrix_covers_every_cell_backend_and_feature():
  pairs = {(c, b) for c, b, _ in DEFAULT}
  assert {c for c, _ in pairs} == set(CELLS)
  on_cpu = {name for name, b in BACKENDS.items() if b.platforms is None or "cpu" in b.platforms}
  assert {b for _, b in pairs} == on_cpu
  for backend_name in on_cpu:  # each feature in the matrix, or its refusal below
    cases = {case for _, b, case in DEFAULT + SLOW if b == backend_name}
    missing = set(CASES) - cases
    assert missing <= {"recurrent_dropout"}, (backend_name, missing)
    if missing:
      assert "recurrent_dropout" not in BACKENDS[backend_name].features
  assert ("user_gated", "per_gate") in pairs and ("user_two_state", "toy_python_loop") in pairs


# ----------------------------------------------------------------------------- choosing

@pytest.mark.parametrize("platform,expected", [
    ("cpu", {"lstm": "per_gate", "gru": "per_gate", "user_gated": "per_gate",
             "min_gru": "linear_scan", "min_lstm": "linear_scan", "mgu": "scan",
             "user_two_state": "scan"}),
    ("gpu", {"lstm": "cudnn", "gru": "fused", "user_gated": "fused",
             "min_gru": "associative", "mgu": "scan"}),
    ("tpu", {"lstm": "fused", "min_gru": "associative", "user_two_state": "scan"}),
])
def test_auto_is_the_platforms_first_backend_that_computes_the_cell(platform, expected):
  for cell_name, name in expected.items():
    assert backends.resolve(CELLS[cell_name], platform=platform).name == name, cell_name
  # minGRU's native kernel is opt-in: "auto" never picks it, here or anywhere.
  assert all("native" not in order for order in backends.AUTO.values())


def test_auto_falls_back_where_a_feature_or_dtype_rules_the_first_out():
  lstm = CELLS["lstm"]
  assert backends.resolve(lstm, platform="gpu",
                          features=frozenset({"recurrent_dropout"})).name == "fused"
  assert backends.resolve(lstm, platform="gpu", dtype=jnp.bfloat16).name == "fused"
  relu_lstm = cells.lstm(activation="relu")
  assert backends.resolve(relu_lstm, platform="gpu").name == "fused"


@pytest.mark.parametrize("cell_name,implementation,reason", [
    ("mgu", "per_gate", "declares its gate layout"),
    ("lstm", "linear_scan", "linear in its state"),
    ("min_lstm", "native", "no native kernel computes min_lstm"),
    ("gru", "cudnn", "runs on gpu, not on cpu"),
    ("lstm", "bogus", "is not one of"),
])
def test_an_explicit_backend_that_cannot_compute_the_layer_says_why(cell_name, implementation,
                                                                    reason):
  with pytest.raises(ValueError, match=reason):
    recurrent.resolve_implementation(CELLS[cell_name], implementation)
  x = jnp.ones((2, 3, FEATURES))
  with pytest.raises(ValueError, match=reason):
    recurrent.unroll(CELLS[cell_name], _params(cell_name), x, units=UNITS,
                     implementation=implementation)


@pytest.mark.parametrize("backend_name", ["parallel", "toy_python_loop", "cudnn_reference",
                                          "linear_scan"])
def test_a_backend_without_recurrent_dropout_refuses_it(backend_name):
  cell_name = "min_gru" if backend_name == "linear_scan" else "lstm"
  x = jnp.ones((2, 3, FEATURES))
  message = ("linear in its state" if backend_name == "linear_scan"
             else "does not compute recurrent dropout")
  with pytest.raises(ValueError, match=message):
    recurrent.unroll(CELLS[cell_name], _params(cell_name), x, units=UNITS,
                     implementation=BACKENDS[backend_name], recurrent_dropout=0.3,
                     training=True, key=jax.random.PRNGKey(0))


def test_recurrent_dropout_needs_recurrent_weights_in_the_cell():
  x = jnp.ones((2, 3, FEATURES))
  for cell_name, message in (("min_gru", "no recurrent weights to drop"),
                             ("mgu", "needs a cell that declares its gate layout")):
    layer = layers.RNN(CELLS[cell_name], UNITS, recurrent_dropout=0.2)
    with pytest.raises(ValueError, match=message):
      layer.apply(_params(cell_name), x, training=True, key=jax.random.PRNGKey(0))


def test_bfloat16_inputs_rule_out_the_float32_kernels():
  cell = CELLS["min_gru"]
  with pytest.raises(ValueError, match="computes float32, not bfloat16"):
    recurrent.unroll(cell, jax.tree.map(lambda a: a.astype(jnp.bfloat16), _params("min_gru")),
                     jnp.ones((2, 3, FEATURES), jnp.bfloat16), units=UNITS,
                     implementation="native")


def test_register_takes_backends_under_new_names_only():
  assert "toy_python_loop" in recurrent.implementations()
  assert backends.get("toy_python_loop") is TOY
  with pytest.raises(ValueError, match="exists already"):
    backends.register(Backend("per_gate", "another", run=_python_loop))
  with pytest.raises(TypeError, match="exactly one of run= and loop_body="):
    Backend("nothing", "neither")
  with pytest.raises(ValueError, match="unknown features"):
    Backend("odd", "odd", features=frozenset({"masks"}), run=_python_loop)


# ----------------------------------------------------------------------------- the loop

@pytest.mark.parametrize("backend_name", ["recompute", "per_gate", "fused"])
def test_unroll_together_equals_separate_unrolls(backend_name):
  # Two recurrences in one loop (Bidirectional's directions): the same values and
  # gradients as two loops, with different cells, widths, masks and dropout.
  x, _, _ = _data(TIME)
  mask = jnp.asarray(ragged_mask(BATCH, TIME))
  forward, backward = CELLS["lstm"], CELLS["gru"]
  p_f = forward.init(jax.random.PRNGKey(1), FEATURES, UNITS)
  p_b = backward.init(jax.random.PRNGKey(2), FEATURES, UNITS + 1)

  def calls(p_f, p_b, x):
    return [dict(cell=forward, params=p_f, inputs=x, units=UNITS, mask=mask,
                 return_sequences=True, zero_output_for_mask=True, dropout=0.2,
                 recurrent_dropout=0.3, training=True, key=jax.random.PRNGKey(5)),
            dict(cell=backward, params=p_b, inputs=x, units=UNITS + 1, mask=mask,
                 go_backwards=True, dropout=0.1, training=True, key=jax.random.PRNGKey(6))]

  def loss(together, p_f, p_b, x):
    if together:
      outputs = recurrent.unroll_together(
          [dict(kwargs, implementation=backend_name) for kwargs in calls(p_f, p_b, x)])
    else:
      outputs = [recurrent.unroll(**kwargs, implementation="scan")
                 for kwargs in calls(p_f, p_b, x)]
    return sum(jnp.sum(jnp.sin(y)) + jnp.sum(jnp.cos(jax.tree.leaves(c)[0]))
               for y, c in outputs)

  assert_trees_close(
      jax.value_and_grad(lambda *a: loss(True, *a), argnums=(0, 1, 2))(p_f, p_b, x),
      jax.value_and_grad(lambda *a: loss(False, *a), argnums=(0, 1, 2))(p_f, p_b, x))


@pytest.mark.parametrize("unroll", [3, 8])
def test_the_loops_unroll_factor_changes_nothing(unroll):
  x, _, _ = _data(TIME)
  mask = jnp.asarray(ragged_mask(BATCH, TIME))
  params = _params("gru")
  for name in ("per_gate", "recompute"):
    grads = [jax.grad(lambda p, u=u: jnp.sum(recurrent.unroll(
        CELLS["gru"], p, x, units=UNITS, mask=mask, implementation=name, unroll=u)[0]))(params)
             for u in (unroll, 1)]
    assert_trees_close(*grads)


def test_per_example_gradients_under_jit_and_vmap():
  # vmap over a batch axis of the loops' custom VJPs.
  x, _, _ = _data(TIME)
  params = _params("lstm")

  def per_example(name):
    def loss(p, x_one):
      return jnp.sum(recurrent.unroll(CELLS["lstm"], p, x_one[None], units=UNITS,
                                      implementation=name)[0] ** 2)
    return jax.jit(jax.vmap(jax.grad(loss), in_axes=(None, 0)))(params, x)

  for name in ("recompute", "per_gate", "fused"):
    assert_trees_close(per_example(name), per_example("scan"))


@pytest.mark.parametrize("mask_kind", ["none", "shared", "per_gate"])
def test_gate_matmuls_derivatives_equal_plain_matmuls(mask_kind):
  # `per_gate.gate_matmuls` has a custom JVP (one kernel matmul in its transpose); its
  # forward- and reverse-mode derivatives must be those of the plain per-gate matmuls.
  rng = np.random.RandomState(5)
  v = jnp.asarray(rng.randn(2, BATCH, FEATURES).astype(np.float32))  # batch shape [2, 4]
  kernel = jnp.asarray(rng.randn(FEATURES, 4 * UNITS).astype(np.float32))
  masks = {"none": None,
           "shared": jnp.asarray(rng.rand(1, 2, BATCH, FEATURES).astype(np.float32)),
           "per_gate": jnp.asarray(rng.rand(4, 2, BATCH, FEATURES).astype(np.float32))}
  mask = masks[mask_kind]

  def fast(v, kernel):
    return jnp.stack(per_gate.gate_matmuls(v, kernel, mask, 4))

  def plain(v, kernel):
    gate_masks = [None] * 4 if mask is None else [mask[min(g, mask.shape[0] - 1)]
                                                  for g in range(4)]
    return jnp.stack([(v if m is None else v * m) @ k
                      for m, k in zip(gate_masks, jnp.split(kernel, 4, axis=-1))])

  np.testing.assert_array_equal(fast(v, kernel), plain(v, kernel))
  for derivative in (jax.jacrev, jax.jacfwd):
    assert_trees_close(derivative(fast, argnums=(0, 1))(v, kernel),
                       derivative(plain, argnums=(0, 1))(v, kernel))


@pytest.mark.parametrize("backend_name", ["per_gate", "fused", "recompute"])
def test_ids_out_of_range_give_nan_rows_as_take_does(backend_name):
  _, table, ids = _data(TIME)
  ids = ids.at[0, 2].set(VOCAB + 3).at[1, 4].set(-1)  # out of range; from the end
  params = _params("gru")
  y_embedded = recurrent.unroll(CELLS["gru"], params, recurrent.Embedded(table, ids),
                                units=UNITS, return_sequences=True,
                                implementation=backend_name)[0]
  y_looked_up = recurrent.unroll(CELLS["gru"], params, jnp.take(table, ids, axis=0),
                                 units=UNITS, return_sequences=True, implementation="scan")[0]
  np.testing.assert_array_equal(np.isnan(y_embedded), np.isnan(y_looked_up))
  assert np.isnan(y_embedded[0, 2:]).all() and not np.isnan(y_embedded[1]).any()
  np.testing.assert_allclose(y_embedded[1:], y_looked_up[1:], rtol=1e-5, atol=1e-5)


def test_sequential_hands_the_table_to_a_recurrent_layer():
  # Embedding then a recurrent layer: the layer receives `Embedded`, and the stack's
  # output and gradients equal those of the looked-up vectors.
  _, _, ids = _data(TIME)
  stack = [layers.Embedding(VOCAB, FEATURES, mask_zero=True), layers.LSTM(UNITS),
           layers.Dense(1)]
  model = layers.Sequential(stack)
  params = model.init(jax.random.PRNGKey(0), ids)
  seen = []
  original = layers.RNN.apply

  def spy(self, params, x, *args, **kwargs):
    seen.append(type(x).__name__)
    return original(self, params, x, *args, **kwargs)

  layers.RNN.apply = spy
  try:
    got = jax.value_and_grad(lambda p: jnp.sum(model.apply(p, ids)))(params)
  finally:
    layers.RNN.apply = original
  assert seen == ["Embedded"]

  def looked_up(p):
    x = jnp.take(p[0]["embeddings"], ids, axis=0)
    y = stack[1].apply(p[1], x, mask=ids != 0)[0]
    return jnp.sum(stack[2].apply(p[2], y)[0])
  assert_trees_close(got, jax.value_and_grad(looked_up)(params))


@pytest.mark.parametrize("backend_name", sorted(
    name for name in BACKENDS if BACKENDS[name].platforms is None
    or "cpu" in BACKENDS[name].platforms))
def test_an_empty_batch_gives_empty_outputs_as_the_scan_does(backend_name):
  """A batch of no rows, and of no rows and no steps, through every backend: the scan's
  empty outputs and carry, or a clear refusal; never an error from inside a backend."""
  cell_name = _representatives(backend_name)
  cell = CELLS[cell_name]
  params = _params(cell_name)
  for time in (TIME, 0):
    x = jnp.zeros((0, time, FEATURES))
    mask = jnp.zeros((0, time), bool)
    for return_sequences in (True, False):
      options = dict(units=UNITS, mask=mask, return_sequences=return_sequences)
      got = recurrent.unroll(cell, params, x, implementation=BACKENDS[backend_name], **options)
      expected = recurrent.unroll(cell, params, x, implementation="scan", **options)
      assert jax.tree.map(jnp.shape, got) == jax.tree.map(jnp.shape, expected)
