"""implementation="native" (`rnn_jax.cpu_kernels`): minGRU's compiled CPU kernel equals the
portable forms ("scan", "linear_scan") in values and gradients, under every option of the
unroll, vmap, any batch size, and falls back where it cannot run."""
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnn_jax import cpu_kernels, layers, recurrent

pytestmark = pytest.mark.skipif(
    jax.default_backend() != "cpu" or not (os.environ.get("CXX") or shutil.which("c++")),
    reason="the native kernels are built for CPU with a C++ compiler")


def _inputs(batch, time, features, seed=0):
  rng = np.random.RandomState(seed)
  x = jnp.asarray(2 * rng.randn(batch, time, features).astype(np.float32))
  mask = rng.rand(batch, time) > 0.25
  mask[0] = True
  return x, jnp.asarray(mask)


def _close(a, b, tol=1e-5):
  for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=tol, atol=tol)


def _value_and_grads(implementation, x, mask, units, with_carry=False, **options):
  layer = layers.MinGRU(units, implementation=implementation, **options)
  params, _ = layer.init(jax.random.PRNGKey(3), x.shape[1:])
  # A nonzero bias, so that both branches of g and saturated gates are exercised.
  params = {**params, "bias": jax.random.normal(jax.random.PRNGKey(4), params["bias"].shape)}
  carry = jax.random.normal(jax.random.PRNGKey(5), (x.shape[0], units)) if with_carry else None
  key = jax.random.PRNGKey(6)

  def loss(params, x, carry):
    y, _ = layer.apply(params, x, mask=mask, initial_carry=carry, training=True, key=key)
    return sum(jnp.sum(jnp.sin(leaf)) for leaf in jax.tree.leaves(y))

  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(params, x, carry)


def test_built_and_chosen_by_default():
  assert cpu_kernels.available()
  cell = layers.MinGRU(4).cell
  assert recurrent.resolve_implementation(cell) == "native"
  assert recurrent.resolve_implementation(layers.MinLSTM(4).cell) == "linear_scan"
  with cpu_kernels.disabled():
    assert recurrent.resolve_implementation(cell) == "linear_scan"
  with pytest.raises(ValueError, match="no native kernel computes min_lstm"):
    recurrent.resolve_implementation(layers.MinLSTM(4).cell, "native")


@pytest.mark.parametrize("options", [
    dict(),
    dict(return_sequences=True),
    dict(masked=True, return_sequences=True, go_backwards=True),
    dict(masked=True, return_sequences=True, return_state=True),
    dict(masked=True, zero_output_for_mask=True, return_sequences=True),
    dict(masked=True, zero_output_for_mask=True),
    dict(dropout=0.3, with_carry=True),
    dict(masked=True, go_backwards=True, with_carry=True),
])
def test_equals_linear_scan_under_every_option(options):
  """Values and the gradients of parameters, inputs and initial carry."""
  options = dict(options)
  x, mask = _inputs(6, 37, 6)
  mask = mask if options.pop("masked", False) else None
  _close(_value_and_grads("native", x, mask, 9, **options),
         _value_and_grads("linear_scan", x, mask, 9, **options))


@pytest.mark.parametrize("shape", [(3, 11, 4, 5), (2, 5, 1, 16), (9, 3, 17, 33)])
def test_equals_the_cells_step(shape):
  """Against the cell's own step ("scan"), with a nonzero initial carry (the outputs of
  padded steps before the first real one are Keras's zeros); the shapes leave partial
  register blocks and odd chunks in every loop of the kernel."""
  batch, time, features, units = shape
  x, mask = _inputs(batch, time, features)
  mask = mask.at[-1].set(False)  # a padded row: its outputs are zeros, its state the carry's
  options = dict(return_sequences=True, return_state=True, with_carry=True)
  _close(_value_and_grads("native", x, mask, units, **options),
         _value_and_grads("scan", x, mask, units, **options))


def test_gradient_of_the_parameters_alone_and_many_rows():
  """Inputs that carry no gradient (data) skip the kernel's input gradient; 300 rows make
  chunks of more than the minimum; a second call gives the same bits."""
  x, mask = _inputs(300, 20, 3, seed=1)
  layer = layers.MinGRU(8)
  params, _ = layer.init(jax.random.PRNGKey(0), x.shape[1:])

  def grads(implementation):
    layer = layers.MinGRU(8, implementation=implementation)
    return jax.jit(jax.grad(lambda p: jnp.sum(layer.apply(p, x, mask=mask)[0] ** 2)))(params)

  first = grads("native")
  _close(first, grads("linear_scan"), tol=2e-5)
  for u, v in zip(jax.tree.leaves(first), jax.tree.leaves(grads("native"))):
    np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


def test_vmap_over_parameters_and_inputs():
  x, mask = _inputs(4, 7, 3, seed=2)
  layer = lambda implementation: layers.MinGRU(5, return_sequences=True,
                                               implementation=implementation)
  params, _ = layer("scan").init(jax.random.PRNGKey(0), x.shape[1:])
  stacked = jax.tree.map(lambda p: jnp.stack([p, 0.5 * p, -p]), params)
  xs = jnp.stack([x, -x, 0.3 * x])

  def run(implementation):
    apply = lambda p, x: jnp.sum(jnp.cos(layer(implementation).apply(p, x, mask=mask)[0]))
    return jax.vmap(jax.value_and_grad(apply, argnums=(0, 1)))(stacked, xs)

  _close(run("native"), run("linear_scan"))


def test_bidirectional_and_stacked():
  x, mask = _inputs(3, 9, 4, seed=3)

  def run(implementation):
    model = layers.Sequential([
        layers.Bidirectional(layers.MinGRU(5, return_sequences=True,
                                           implementation=implementation)),
        layers.MinGRU(6, implementation=implementation), layers.Dense(1)])
    params = model.init(jax.random.PRNGKey(0), x)
    loss = lambda p, x: jnp.sum(jnp.sin(model.apply(p, x, mask=mask)))
    return jax.value_and_grad(loss, argnums=(0, 1))(params, x)

  _close(run("native"), run("scan"))


def test_other_dtypes_and_export_take_the_portable_path():
  x, _ = _inputs(2, 6, 3)
  layer = layers.MinGRU(4)
  params, _ = layer.init(jax.random.PRNGKey(0), x.shape[1:])
  lowered = lambda p, x: jax.jit(lambda p, x: layer.apply(p, x)[0]).lower(p, x).as_text()
  assert "rnn_jax_min_gru_forward" in lowered(params, x)
  half = jax.tree.map(lambda a: a.astype(jnp.bfloat16), (params, x))
  assert "rnn_jax_min_gru_forward" not in lowered(*half)
  np.testing.assert_allclose(
      np.asarray(layer.apply(*half)[0], np.float32),
      np.asarray(layers.MinGRU(4, implementation="linear_scan").apply(*half)[0], np.float32))
  with cpu_kernels.disabled():
    assert "rnn_jax_min_gru_forward" not in lowered(params, x)


def test_a_compiler_that_fails_warns_and_falls_back(monkeypatch, tmp_path):
  monkeypatch.setattr(cpu_kernels, "_loaded", None)
  monkeypatch.setenv("CXX", "false")  # a "compiler" that fails
  monkeypatch.setenv("RNN_JAX_KERNEL_CACHE", str(tmp_path))
  with pytest.warns(RuntimeWarning, match="could not be built"):
    assert not cpu_kernels.available()
  assert recurrent.resolve_implementation(layers.MinGRU(3).cell) == "linear_scan"
  assert list(tmp_path.iterdir()) == []  # nothing half-written left behind
