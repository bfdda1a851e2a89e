"""layers.MinGRU / MinLSTM: the parallel forms ("associative", log space; "linear_scan")
equal the cell's own step through the portable "scan", values and gradients (1e-5), with
masks, go_backwards, return_sequences, input dropout, Bidirectional and stacking."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnn_jax import layers, recurrent

BATCH, TIME, FEATURES, UNITS = 3, 9, 4, 5
LAYERS = {"min_gru": layers.MinGRU, "min_lstm": layers.MinLSTM}


def _inputs(seed=0):
  rng = np.random.RandomState(seed)
  x = jnp.asarray(rng.randn(BATCH, TIME, FEATURES).astype(np.float32))
  mask = np.ones((BATCH, TIME), bool)
  mask[0, 6:] = False
  mask[1, :3] = False
  mask[2, 4] = False
  return x, jnp.asarray(mask)


def _close(a, b):
  for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=1e-5, atol=1e-5)


def _value_and_grads(model_of, implementation, x, mask, **apply_kwargs):
  model = model_of(implementation)
  params = model.init(jax.random.PRNGKey(0), x)

  def loss(p, x):
    y = model.apply(p, x, mask=mask, **apply_kwargs)
    return jnp.sum(jnp.sin(y))

  return jax.value_and_grad(loss, argnums=(0, 1))(params, x)


@pytest.mark.parametrize("name", sorted(LAYERS))
@pytest.mark.parametrize("implementation", ["associative", "linear_scan"])
@pytest.mark.parametrize("masked,go_backwards,return_sequences,dropout", [
    (False, False, False, 0.0), (True, False, True, 0.0), (True, True, False, 0.3),
    (True, True, True, 0.0)])
def test_parallel_forms_equal_the_step(name, implementation, masked, go_backwards,
                                       return_sequences, dropout):
  x, mask = _inputs()
  model_of = lambda impl: layers.Sequential([
      LAYERS[name](UNITS, go_backwards=go_backwards, return_sequences=return_sequences,
                   dropout=dropout, implementation=impl), layers.Flatten()])
  kwargs = dict(training=dropout > 0, key=jax.random.PRNGKey(1))
  _close(_value_and_grads(model_of, implementation, x, mask if masked else None, **kwargs),
         _value_and_grads(model_of, "scan", x, mask if masked else None, **kwargs))


@pytest.mark.parametrize("implementation", ["associative", "linear_scan"])
def test_bidirectional_and_stacked(implementation):
  x, mask = _inputs(1)
  model_of = lambda impl: layers.Sequential([
      layers.Bidirectional(layers.MinGRU(UNITS, return_sequences=True, implementation=impl)),
      layers.MinLSTM(UNITS, implementation=impl),
      layers.Dense(1)])
  _close(_value_and_grads(model_of, implementation, x, mask),
         _value_and_grads(model_of, "scan", x, mask))


def test_defaults_and_refusals():
  layer = layers.MinGRU(UNITS)
  assert recurrent.resolve_implementation(layer.cell) in (
      ("native", "linear_scan") if jax.default_backend() == "cpu" else ("associative",))
  x, _ = _inputs()
  params, _ = layer.init(jax.random.PRNGKey(0), x.shape[1:])
  assert set(params) == {"kernel", "bias"}
  with pytest.raises(ValueError, match="needs a cell that declares its gate layout"):
    layers.MinGRU(UNITS, implementation="per_gate").apply(params, x)
  with pytest.raises(ValueError, match="no recurrent weights"):
    layers.MinGRU(UNITS, recurrent_dropout=0.2).apply(params, x, training=True,
                                                        key=jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match="needs a cell linear in its state"):
    layers.GRU(UNITS, implementation="associative").apply(
        layers.GRU(UNITS).init(jax.random.PRNGKey(0), x.shape[1:])[0], x)


@pytest.mark.parametrize("implementation", ["associative", "linear_scan"])
def test_padded_steps_before_the_first_output_zeros_with_a_carry(implementation):
  """With an initial carry, padded steps before a sequence's first real step output
  Keras's zeros (its "previous output"), as the step loop does, not the carry."""
  x, mask = _inputs(2)
  mask = mask.at[2].set(False)  # a row with no real step
  carry = jax.random.normal(jax.random.PRNGKey(2), (BATCH, UNITS))
  for return_sequences in (True, False):
    def run(impl):
      layer = layers.MinGRU(UNITS, return_sequences=return_sequences, implementation=impl)
      params, _ = layer.init(jax.random.PRNGKey(0), x.shape[1:])
      return layer.apply(params, x, mask=mask, initial_carry=carry)[0]
    _close(run(implementation), run("scan"))
