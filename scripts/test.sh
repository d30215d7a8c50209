#!/usr/bin/env bash
# Sets up everything the suite needs (see setup.sh --full) and runs the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --full
export VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-1}
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
