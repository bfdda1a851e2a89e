"""Speed benchmarks: rnn_jax against its peers on the lecture's models (`python -m benchmarks.run`)."""
