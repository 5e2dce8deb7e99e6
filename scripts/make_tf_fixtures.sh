#!/usr/bin/env bash
# Regenerate tests/fixtures/tf/ with real TensorFlow + tf-keras as the writer.
# TensorFlow lives in its own throwaway virtualenv; the test suite never imports it.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${TF_FIXTURE_VENV:-/tmp/tfvenv}"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import tensorflow, tf_keras" 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet tensorflow-cpu tf-keras numpy
fi
export TF_USE_LEGACY_KERAS=1 TF_CPP_MIN_LOG_LEVEL=2 CUDA_VISIBLE_DEVICES=""
exec "$venv/bin/python" "$here/make_tf_fixtures.py" "${1:-$here/../tests/fixtures/tf}"
