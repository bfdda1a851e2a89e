"""Keras 3 parity: `rnn_jax.interop.from_keras(model)` computes `model(x)` to 1e-5.

Each case builds a small Keras Sequential, overwrites every weight with normal * 0.5
(so biases and forget gates are not at their defaults), converts it, and compares the
outputs on inputs with padding at the start, in the middle and at the end.
"""
import contextlib

import jax
import numpy as np
import pytest

keras = pytest.importorskip("keras")
from keras import layers as kl  # noqa: E402

from rnn_jax import interop  # noqa: E402

BATCH, TIME, FEATURES, VOCAB = 3, 6, 4, 7
TOLERANCE = 1e-5


def _ids():
  """<int32>[batch, time] ids with 0 (padding) in the middle, at the end, and at the start."""
  ids = np.random.default_rng(0).integers(1, VOCAB, (BATCH, TIME)).astype("int32")
  ids[0, 2:4] = 0
  ids[1, -2:] = 0
  ids[2, :1] = 0
  return ids


def _floats():
  return np.random.default_rng(1).normal(size=(BATCH, TIME, FEATURES)).astype("float32")


def _randomize(model, scale=0.5, seed=0):
  rng = np.random.default_rng(seed)
  for weight in model.weights:
    weight.assign((rng.normal(size=weight.shape) * scale).astype("float32"))


def _assert_parity(model, x, scale=0.5, jit=False):
  """model(x) == apply_fn(params, x); eager by default, since compiling every case is slow."""
  _randomize(model, scale)
  expected = model(x, training=False)
  apply_fn, params = interop.from_keras(model)
  with contextlib.nullcontext() if jit else jax.disable_jit():
    got = apply_fn(params, x)
  expected_leaves = expected if isinstance(expected, (tuple, list)) else [expected]
  got_leaves = got if isinstance(got, (tuple, list)) else [got]
  assert len(got_leaves) == len(expected_leaves)
  for g, e in zip(got_leaves, expected_leaves):
    e = np.asarray(e)
    assert g.shape == e.shape
    np.testing.assert_allclose(np.asarray(g), e, rtol=0, atol=TOLERANCE)


def _sequence_model(*layers):
  return keras.Sequential([keras.Input((TIME, FEATURES)), *layers])


def _masked_model(*layers):
  return keras.Sequential([keras.Input((TIME,), dtype="int32"),
                           kl.Embedding(VOCAB, FEATURES, mask_zero=True), *layers])


RNN_LAYERS = {
    # SimpleRNN
    "simple_rnn": lambda: kl.SimpleRNN(3),
    "simple_rnn_relu_nobias": lambda: kl.SimpleRNN(3, activation="relu", use_bias=False),
    "simple_rnn_keras_own_activation": lambda: kl.SimpleRNN(3, activation="celu"),
    "simple_rnn_sequences_backwards": lambda: kl.SimpleRNN(3, return_sequences=True,
                                                           go_backwards=True),
    # LSTM
    "lstm": lambda: kl.LSTM(3),
    "lstm_sequences": lambda: kl.LSTM(3, return_sequences=True),
    "lstm_backwards": lambda: kl.LSTM(3, go_backwards=True),
    "lstm_nobias_no_forget_bias": lambda: kl.LSTM(3, use_bias=False, unit_forget_bias=False),
    "lstm_activations": lambda: kl.LSTM(3, activation="elu", recurrent_activation="hard_sigmoid"),
    "lstm_unroll_dropout": lambda: kl.LSTM(3, return_sequences=True, unroll=True, dropout=0.5,
                                           recurrent_dropout=0.5),
    # GRU, both variants
    "gru_reset_after": lambda: kl.GRU(3),
    "gru_reset_before": lambda: kl.GRU(3, reset_after=False),
    "gru_reset_before_sequences_backwards": lambda: kl.GRU(3, reset_after=False,
                                                           return_sequences=True,
                                                           go_backwards=True),
    "gru_nobias": lambda: kl.GRU(3, use_bias=False),
    "gru_nobias_reset_before": lambda: kl.GRU(3, use_bias=False, reset_after=False),
    "gru_activations": lambda: kl.GRU(3, activation="leaky_relu", recurrent_activation="relu6"),
    "gru_zero_output_for_mask": lambda: kl.GRU(3, return_sequences=True,
                                               zero_output_for_mask=True),
    "gru_zero_output_for_mask_unroll": lambda: kl.GRU(3, return_sequences=True, unroll=True,
                                                      zero_output_for_mask=True),
    # the generic RNN layer around a cell
    "rnn_lstm_cell": lambda: kl.RNN(kl.LSTMCell(3), return_sequences=True),
    "rnn_gru_cell_backwards": lambda: kl.RNN(kl.GRUCell(3, reset_after=False), go_backwards=True),
}


@pytest.mark.parametrize("name", sorted(RNN_LAYERS))
def test_recurrent_layer_unmasked(name):
  _assert_parity(_sequence_model(RNN_LAYERS[name]()), _floats())


@pytest.mark.parametrize("name", sorted(RNN_LAYERS))
def test_recurrent_layer_masked(name):
  _assert_parity(_masked_model(RNN_LAYERS[name]()), _ids())


@pytest.mark.parametrize("merge_mode", ["concat", "sum", "mul", "ave", None])
@pytest.mark.parametrize("return_sequences", [False, True])
def test_bidirectional_merge_modes_masked(merge_mode, return_sequences):
  model = _masked_model(kl.Bidirectional(kl.GRU(3, return_sequences=return_sequences),
                                         merge_mode=merge_mode))
  _assert_parity(model, _ids())


@pytest.mark.parametrize("cell", ["simple_rnn", "lstm", "gru"])
def test_bidirectional_each_cell_unmasked(cell):
  layer = {"simple_rnn": kl.SimpleRNN, "lstm": kl.LSTM, "gru": kl.GRU}[cell]
  _assert_parity(_sequence_model(kl.Bidirectional(layer(3, return_sequences=True))), _floats())


def test_bidirectional_explicit_backward_layer():
  forward = kl.LSTM(3, return_sequences=True)
  backward = kl.GRU(2, return_sequences=True, go_backwards=True, reset_after=False)
  model = _masked_model(kl.Bidirectional(forward, backward_layer=backward))
  _assert_parity(model, _ids(), jit=True)


@pytest.mark.parametrize("merge_mode", ["concat", None])
def test_bidirectional_return_state(merge_mode):
  model = _masked_model(kl.Bidirectional(kl.LSTM(3, return_state=True), merge_mode=merge_mode))
  _assert_parity(model, _ids())


def test_bidirectional_unroll_masked_keeps_previous_output():
  # Keras's unrolled loop ignores zero_output_for_mask: masked steps repeat the output.
  model = _masked_model(kl.Bidirectional(kl.SimpleRNN(3, return_sequences=True, unroll=True)))
  _assert_parity(model, _ids())


@pytest.mark.parametrize("layer", [lambda: kl.LSTM(3, return_state=True),
                                   lambda: kl.GRU(3, return_state=True, return_sequences=True),
                                   lambda: kl.SimpleRNN(3, return_state=True, go_backwards=True)])
def test_return_state(layer):
  _assert_parity(_masked_model(layer()), _ids())


def test_stack_of_two_masked_with_dense_on_sequences():
  model = _masked_model(kl.LSTM(3, return_sequences=True), kl.Dense(5, activation="tanh"),
                        kl.Dropout(0.5), kl.GRU(2, reset_after=False), kl.Dense(1, "sigmoid"))
  _assert_parity(model, _ids())


def test_lecture_stacked_gru():
  model = _sequence_model(kl.GRU(32, return_sequences=True, dropout=0.1, recurrent_dropout=0.5),
                          kl.GRU(64, activation="relu", dropout=0.1, recurrent_dropout=0.5),
                          kl.Dense(1))
  _assert_parity(model, _floats(), jit=True)


def test_lecture_imdb_model():
  model = keras.Sequential([keras.Input((TIME,), dtype="int32"), kl.Embedding(10000, 32),
                            kl.LSTM(32), kl.Dense(1, activation="sigmoid")])
  _assert_parity(model, _ids(), jit=True)


def test_flatten_dense_dropout_activation_masking():
  model = _sequence_model(kl.Masking(0.0), kl.GaussianNoise(0.1), kl.SpatialDropout1D(0.2),
                          kl.SimpleRNN(3, return_sequences=True),
                          kl.Activation("relu"), kl.Flatten(), kl.Dropout(0.3),
                          kl.Dense(2, activation="softmax"))
  x = _floats()
  x[0, 1:3] = 0.0
  _assert_parity(model, x)


@pytest.mark.parametrize("how", ["called", "build", "add"])
def test_model_without_input(how):
  """Sequentials built by calling them, by model.build, or grown with add() and called."""
  stack = [kl.Embedding(VOCAB, FEATURES, mask_zero=True),
           kl.Bidirectional(kl.LSTM(3, return_sequences=True)), kl.GRU(2), kl.Dense(2)]
  model = keras.Sequential(stack if how != "add" else None)
  for layer in stack if how == "add" else ():
    model.add(layer)
  if how == "build":
    model.build((None, TIME))
  else:
    model(_ids())
  _assert_parity(model, _ids())


def test_nested_sequential():
  inner = keras.Sequential([kl.GRU(3, return_sequences=True), kl.Dense(2)])
  _assert_parity(_masked_model(inner, kl.LSTM(2)), _ids())


# --- errors: a ValueError naming the layer and the argument


def test_unsupported_layer_is_named():
  model = _sequence_model(kl.Conv1D(2, 3, name="my_conv"))
  with pytest.raises(ValueError, match="my_conv.*Conv1D"):
    interop.from_keras(model)


def test_unsupported_argument_is_named():
  model = keras.Sequential([keras.Input((TIME, FEATURES), batch_size=BATCH),
                            kl.LSTM(3, stateful=True, name="state_lstm")])
  with pytest.raises(ValueError, match="state_lstm.*stateful"):
    interop.from_keras(model)


def test_custom_activation_is_named():
  model = _sequence_model(kl.GRU(3, activation=lambda x: x * 2, name="odd_gru"))
  with pytest.raises(ValueError, match="odd_gru.*activation"):
    interop.from_keras(model)


def test_unbuilt_model_is_rejected():
  with pytest.raises(ValueError, match="not built"):
    interop.from_keras(keras.Sequential([kl.LSTM(3)]))


def test_functional_model_is_rejected():
  inputs = keras.Input((TIME, FEATURES))
  model = keras.Model(inputs, kl.LSTM(3)(inputs))
  with pytest.raises(ValueError, match="Sequential"):
    interop.from_keras(model)


@pytest.mark.parametrize("kind", ["simple_rnn", "lstm", "gru"])
@pytest.mark.parametrize("go_backwards", [False, True])
def test_initial_state_and_leading_padding(kind, go_backwards):
  """A nonzero initial state with padding before a sequence's first real step: Keras
  outputs the initial state's h at those steps (its "previous output" is the first
  state), and so does every rnn_jax backend."""
  from rnn_jax import layers  # pylint: disable=import-outside-toplevel
  x, mask = _floats(), np.ones((BATCH, TIME), bool)
  mask[0, :3] = mask[1, -2:] = False
  mask[2, :] = False  # no real step at all
  keras_layer = {"simple_rnn": kl.SimpleRNN, "lstm": kl.LSTM, "gru": kl.GRU}[kind](
      3, return_sequences=True, go_backwards=go_backwards)
  states = [np.full((BATCH, 3), 0.5, "float32"), np.full((BATCH, 3), -0.3, "float32")]
  states = states[:2 if kind == "lstm" else 1]
  keras_layer(x, mask=mask, initial_state=states)
  _randomize(keras_layer)
  expected = np.asarray(keras_layer(x, mask=mask, initial_state=states))
  ours = {"simple_rnn": layers.SimpleRNN, "lstm": layers.LSTM, "gru": layers.GRU}[kind]
  params = {w.path.split("/")[-1]: np.asarray(w) for w in keras_layer.weights}
  carry = tuple(states) if kind == "lstm" else states[0]
  for implementation in ("scan", "per_gate", "fused", "recompute"):
    layer = ours(3, return_sequences=True, go_backwards=go_backwards,
                 implementation=implementation)
    got = layer.apply(params, x, mask=mask, initial_carry=carry)[0]
    np.testing.assert_allclose(np.asarray(got), expected, rtol=0, atol=TOLERANCE)
