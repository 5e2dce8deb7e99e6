#!/usr/bin/env bash
# Regenerate tests/fixtures/keras_legacy/ with real Keras 2.0.5 (Theano backend) and tf.keras 2.12 as writers.
# Each writer lives in its own throwaway Python 3.11 virtualenv (TensorFlow 2.12 supports Python 3.8-3.11;
# Keras 2.0.5 runs on Theano 1.0.5 in its pure-Python mode); the test suite never imports either.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-$here/../tests/fixtures/keras_legacy}"
py="${PYTHON311:-python3.11}"
k205="${KERAS205_VENV:-/tmp/k205venv}"
tf212="${TF212_VENV:-/tmp/tf212venv}"
if ! "$k205/bin/python" -c "import keras, theano" 2>/dev/null; then
    "$py" -m venv "$k205"
    "$k205/bin/pip" install --quiet numpy==1.23.5 scipy==1.9.3 h5py==3.8.0 pyyaml six Theano==1.0.5 keras==2.0.5
fi
if ! "$tf212/bin/python" -c "import tensorflow" 2>/dev/null; then
    "$py" -m venv "$tf212"
    "$tf212/bin/pip" install --quiet tensorflow-cpu==2.12.0
fi
KERAS_BACKEND=theano THEANO_FLAGS="cxx=,blas.ldflags=,device=cpu,floatX=float32" \
    "$k205/bin/python" "$here/make_keras_legacy_fixtures.py" keras205 "$out"
TF_CPP_MIN_LOG_LEVEL=2 CUDA_VISIBLE_DEVICES="" "$tf212/bin/python" "$here/make_keras_legacy_fixtures.py" tf212 "$out"
