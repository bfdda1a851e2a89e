"""implementation="native" (`rnn_jax.cpu_kernels`): what the equality matrix
(tests/test_backends.py) does not cover: the kernel's own shapes and row chunks, vmap,
bit-identical repeats, the opt-in, and the fallback where it cannot be built. Its build's
safety is tests/test_native_build.py."""
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import assert_trees_close
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


@pytest.mark.parametrize("shape", [(3, 11, 4, 5), (2, 5, 1, 16), (9, 3, 17, 33)])
def test_equals_the_cells_step(shape):
  """Against the cell's own step ("scan"), with a nonzero initial carry (the outputs of
  padded steps before the first real one are Keras's zeros); the shapes leave partial
  register blocks and odd chunks in every loop of the kernel."""
  batch, time, features, units = shape
  x, mask = _inputs(batch, time, features)
  mask = mask.at[-1].set(False)  # a padded row: its outputs are zeros, its state the carry's
  options = dict(return_sequences=True, return_state=True, with_carry=True)
  assert_trees_close(_value_and_grads("native", x, mask, units, **options),
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
  assert_trees_close(first, grads("linear_scan"), 2e-5)
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

  assert_trees_close(run("native"), run("linear_scan"))


def _lowered(layer, params, x) -> str:
  return jax.jit(lambda p, x: layer.apply(p, x)[0]).lower(params, x).as_text()


def test_opt_in_never_auto_and_export_takes_the_portable_path(tmp_path):
  """"auto" never builds or picks the kernel; implementation="native" lowers to it; an
  export of a model asking for it computes "auto" instead (an artifact cannot carry a
  custom call); results.json's record of the backends does not build it."""
  from rnn_jax.io import export
  from rnn_jax.train import provenance
  x, _ = _inputs(2, 6, 3)
  native = layers.MinGRU(4, implementation="native")
  params, _ = native.init(jax.random.PRNGKey(0), x.shape[1:])
  assert recurrent.resolve_implementation(native.cell) == "linear_scan"
  assert "rnn_jax_min_gru_forward" not in _lowered(layers.MinGRU(4), params, x)
  assert "rnn_jax_min_gru_forward" in _lowered(native, params, x)
  model = layers.Sequential([native, layers.Dense(1)])
  portable = export._exportable(model)
  assert portable.layers[0].implementation == "auto"
  assert provenance.backends(model) == [{"layer": "model.layers[0]", "cell": "min_gru",
                                         "implementation": "native", "backend": "native"}]


def test_a_compiler_that_fails_warns_and_computes_by_linear_scan(monkeypatch, tmp_path):
  monkeypatch.setattr(cpu_kernels, "_loaded", None)
  monkeypatch.setenv("CXX", "false")  # a "compiler" that fails
  monkeypatch.setenv("RNN_JAX_KERNEL_CACHE", str(tmp_path / "cache"))
  x, mask = _inputs(3, 5, 2)
  native = layers.MinGRU(4, implementation="native", return_sequences=True)
  params, _ = native.init(jax.random.PRNGKey(0), x.shape[1:])
  with pytest.warns(RuntimeWarning, match="the native CPU kernel is not used"):
    lowered = _lowered(native, params, x)
  assert "rnn_jax_min_gru_forward" not in lowered
  assert_trees_close(native.apply(params, x, mask=mask)[0],
         layers.MinGRU(4, implementation="linear_scan", return_sequences=True).apply(
             params, x, mask=mask)[0])
  assert not any(p.suffix == ".so" for p in (tmp_path / "cache").glob("*"))
