#!/usr/bin/env bash
# Bake step: prove the image can serve before it is saved. Loads every available
# catalogue service once (real weights, on the GPU when there is one); a broken model
# fails the build instead of a fleet of workers.
set -euo pipefail

VENV="${VENV:-/opt/classifycloud/venv}"  # overridable for tests and other layouts

if [ "${PREFETCH_MODELS:-true}" != "true" ]; then
  echo "bake check skipped (prefetch_models=false)"
  exit 0
fi

"$VENV/bin/python" - <<'PY'
from shared.catalogue import load_catalogue
from shared.config import Settings
from worker.models.registry import ModelRegistry

settings = Settings(metrics_enabled=False)
registry = ModelRegistry(load_catalogue(), settings)
registry.load()
print("hosted:", registry.hosted())
print("unavailable:", registry.unavailable)
if not registry.hosted():
    raise SystemExit("no catalogue service could be loaded")
PY

if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
fi
