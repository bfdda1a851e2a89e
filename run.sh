#!/usr/bin/env bash
# Quick start: creates .venv on first use, installs the project, then
#   ./run.sh                 the adding-problem comparison (offline, a few minutes on 2 cores)
#   ./run.sh test [ARGS]     the test suite, in parallel (what CI runs; pytest ARGS)
#   ./run.sh quick [ARGS]    the suite without the end-to-end subprocess runs (the dev loop)
#   ./run.sh NAME [--flags]  python -m experiments.NAME --flags
#   ./run.sh bench [--flags] python -m benchmarks.run --flags
set -euo pipefail
cd "$(dirname "$0")"
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"

install() {  # install NAME ARGS...: pip install ARGS once, again when pyproject.toml changes
  local stamp="$VENV/.installed-$1"; shift
  if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$@"
    touch "$stamp"
  fi
}

if [ ! -x "$VENV/bin/python" ]; then
  echo "run.sh: creating $VENV (first run only)" >&2
  "$PYTHON" -m venv "$VENV"
fi
# The package with what the experiments need (training, data, plots); the bare package
# (`pip install .`) is the cells and layers on JAX alone.
install core -e ".[experiments]"

case "${1:-}" in
  "")
    exec "$VENV/bin/python" -m experiments.adding_problem ;;
  test|quick)
    mode="$1"; shift
    install test -e ".[test]"
    # PyTorch 2.13.0's CPU wheel lies on these machines' disk; its parity tests need it.
    install torch "torch==2.13.0"
    # pyproject.toml's default deselects `slow`; quick also leaves out `e2e`.
    if [ "$mode" = quick ]; then set -- -m "not slow and not e2e" "$@"; fi
    exec "$VENV/bin/python" -m pytest -n auto "$@" ;;
  bench)
    shift
    install test -e ".[test]"
    exec "$VENV/bin/python" -m benchmarks.run "$@" ;;
  -h|--help)
    sed -n '2,6p' "$0" ;;
  *)
    name="$1"; shift
    exec "$VENV/bin/python" -m "experiments.$name" "$@" ;;
esac
