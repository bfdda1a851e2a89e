import os
import shutil
import tempfile

# Keras must pick its JAX backend before it is first imported.
os.environ.setdefault("KERAS_BACKEND", "jax")

# One JAX compilation cache for the whole test run: its xdist workers and the experiments
# they start as subprocesses compile many of the same programs, the train steps above
# all. A cached executable is the one XLA compiled, so no result changes. The pytest
# process makes the directory before its workers start (they and the subprocesses
# inherit the environment) and removes it at the end; a cache the user set is left
# alone. (docs/performance.md, "The test suite's time".)
_OWN_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ and "PYTEST_XDIST_WORKER" not in os.environ:
  _OWN_CACHE = tempfile.mkdtemp(prefix="rnn_jax_tests_jax_cache_")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _OWN_CACHE
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")


def pytest_sessionfinish(session):
  if _OWN_CACHE:  # set in the pytest process only: workers inherit the variable
    shutil.rmtree(_OWN_CACHE, ignore_errors=True)
