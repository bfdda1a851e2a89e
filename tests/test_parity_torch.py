"""PyTorch parity: `rnn_jax.interop.from_torch(module)` computes `module(x, hx)` to 1e-5."""
import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from rnn_jax import interop  # noqa: E402

BATCH, TIME, FEATURES, HIDDEN = 3, 5, 4, 3
TOLERANCE = 1e-5


def _module(kind, seed=0, **kwargs):
  torch.manual_seed(seed)
  module = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[kind](
      FEATURES, HIDDEN, **kwargs)
  with torch.no_grad():  # torch's default init is uniform(+-1/sqrt(hidden)); widen it
    for weight in module.parameters():
      weight.copy_(torch.randn_like(weight) * 0.5)
  return module.eval()


def _assert_close(got, expected):
  got_leaves, expected_leaves = jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(
      expected, is_leaf=lambda t: isinstance(t, torch.Tensor))
  assert len(got_leaves) == len(expected_leaves)
  for g, e in zip(got_leaves, expected_leaves):
    e = e.detach().numpy()
    assert g.shape == e.shape
    np.testing.assert_allclose(np.asarray(g), e, rtol=0, atol=TOLERANCE)


def _initial_state(kind, num_states, batch=(BATCH,)):
  rng = np.random.default_rng(3)
  h = rng.normal(size=(num_states, *batch, HIDDEN)).astype("float32")
  if kind == "lstm":
    return h, rng.normal(size=h.shape).astype("float32")
  return h


def _to_torch(state):
  if isinstance(state, tuple):
    return tuple(torch.from_numpy(s) for s in state)
  return torch.from_numpy(state)


CASES = [
    dict(),
    dict(num_layers=2),
    dict(bidirectional=True),
    dict(num_layers=3, bidirectional=True, batch_first=True),
    dict(bias=False, batch_first=True),
    dict(num_layers=2, dropout=0.5),  # dropout between layers: off in eval
]


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_module_parity(kind, case):
  kwargs = CASES[case]
  module = _module(kind, **kwargs)
  x = np.random.default_rng(1).normal(size=(BATCH, TIME, FEATURES)).astype("float32")
  if not kwargs.get("batch_first"):
    x = np.swapaxes(x, 0, 1).copy()
  apply_fn, params = interop.from_torch(module)
  with jax.disable_jit(), torch.no_grad():
    _assert_close(apply_fn(params, x), module(torch.from_numpy(x)))
    num_states = kwargs.get("num_layers", 1) * (2 if kwargs.get("bidirectional") else 1)
    hx = _initial_state(kind, num_states)
    _assert_close(apply_fn(params, x, hx), module(torch.from_numpy(x), _to_torch(hx)))


def test_relu_rnn_jitted_on_torch_tensors():
  module = _module("rnn", nonlinearity="relu", num_layers=2, bidirectional=True)
  x = np.random.default_rng(1).normal(size=(TIME, BATCH, FEATURES)).astype("float32")
  x = torch.from_numpy(x)
  hx = torch.from_numpy(_initial_state("rnn", 4))
  apply_fn, params = interop.from_torch(module)
  with torch.no_grad():
    _assert_close(apply_fn(params, x), module(x))
    _assert_close(apply_fn(params, x, hx), module(x, hx))


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_unbatched_input(kind):
  module = _module(kind, num_layers=2, bidirectional=True)
  x = np.random.default_rng(1).normal(size=(TIME, FEATURES)).astype("float32")
  hx = _initial_state(kind, 4, batch=())
  apply_fn, params = interop.from_torch(module)
  with jax.disable_jit(), torch.no_grad():
    _assert_close(apply_fn(params, x, hx), module(torch.from_numpy(x), _to_torch(hx)))


@pytest.mark.parametrize("kind", ["RNNCell", "LSTMCell", "GRUCell"])
def test_cells(kind):
  torch.manual_seed(0)
  cell = getattr(torch.nn, kind)(FEATURES, HIDDEN)
  x = np.random.default_rng(1).normal(size=(BATCH, FEATURES)).astype("float32")
  hx = _initial_state("lstm" if kind == "LSTMCell" else "rnn", BATCH, batch=())
  apply_fn, params = interop.from_torch(cell)
  with jax.disable_jit(), torch.no_grad():
    _assert_close(apply_fn(params, x), cell(torch.from_numpy(x)))
    _assert_close(apply_fn(params, x, hx), cell(torch.from_numpy(x), _to_torch(hx)))


def test_params_layout():
  module = _module("gru", num_layers=2, bidirectional=True)
  _, params = interop.from_torch(module)
  assert sorted(params) == ["l0", "l0_reverse", "l1", "l1_reverse"]
  assert params["l1"]["kernel"].shape == (2 * HIDDEN, 3 * HIDDEN)
  assert params["l0"]["recurrent_kernel"].shape == (HIDDEN, 3 * HIDDEN)
  assert params["l0"]["bias"].shape == (2, 3 * HIDDEN)
  # torch's r, z, n rows become z, r, h columns
  w_ih = module.weight_ih_l0.detach().numpy()
  np.testing.assert_array_equal(params["l0"]["kernel"][:, :HIDDEN], w_ih[HIDDEN:2 * HIDDEN].T)
  np.testing.assert_array_equal(params["l0"]["kernel"][:, HIDDEN:2 * HIDDEN], w_ih[:HIDDEN].T)


def test_proj_size_is_rejected():
  with pytest.raises(ValueError, match="LSTM.*proj_size"):
    interop.from_torch(torch.nn.LSTM(FEATURES, HIDDEN, proj_size=2))


def test_other_module_is_rejected():
  with pytest.raises(ValueError, match="Linear"):
    interop.from_torch(torch.nn.Linear(FEATURES, HIDDEN))
