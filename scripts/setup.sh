#!/usr/bin/env bash
# Idempotent set-up: a virtualenv (.venv), torch, l2fast built from source, test and trainer tools.
#
# torch: a torch the chosen python already has is used as it is (the venv sees it); otherwise
# $L2FAST_TORCH is installed (default torch==2.13.0, a CPU build). For a GPU, install a CUDA build of
# torch first (for example `pip install torch --index-url https://download.pytorch.org/whl/cu130`),
# or set L2FAST_TORCH and PIP_INDEX_URL. The native library is rebuilt only when its sources change.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${L2FAST_VENV:-.venv}

if [ ! -x "$VENV/bin/python" ]; then
  if "$PYTHON" -c "import torch" 2>/dev/null; then
    "$PYTHON" -m venv --system-site-packages "$VENV"
  else
    "$PYTHON" -m venv "$VENV"
  fi
fi
PY="$VENV/bin/python"
pip_install() { "$PY" -m pip install -q --disable-pip-version-check "$@"; }

"$PY" -c "import torch" 2>/dev/null || pip_install "${L2FAST_TORCH:-torch==2.13.0}"
pip_install "setuptools>=77" ninja numpy pytest pytest-benchmark "sentencepiece>=0.2" "sacrebleu>=2.4" \
  "matplotlib>=3.7" "tqdm>=4.60"
# The frameworks tests/integrations/test_integrations.py trains in (the versions of pyproject.toml's test extra).
pip_install transformers==5.25.0 accelerate==1.16.0 lightning==2.6.6

stamp="$VENV/.l2fast-source-hash"
source_hash=$(cat setup.py pyproject.toml $(find csrc -type f | sort) | sha256sum | cut -d' ' -f1)
# Also rebuilt when the build does not load natively, e.g. after a torch upgrade (l2fast checks the
# torch version the library was built against).
native() { "$PY" -W ignore -c "import l2fast, sys; sys.exit(l2fast.backend() != 'native')" 2>/dev/null; }
if [ "$(cat "$stamp" 2>/dev/null)" != "$source_hash" ] || ! native; then
  echo "building l2fast (native kernels) ..."
  pip_install --no-build-isolation --no-deps -e .
  echo "$source_hash" >"$stamp"
fi
"$PY" -m l2fast --version
