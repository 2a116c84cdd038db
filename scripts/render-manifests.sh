#!/usr/bin/env bash
# Regenerate manifests/base/ from charts/eve-platform (see scripts/render_manifests.py).
# Also regenerates the chart's values.schema.json and values tables first.
#   scripts/render-manifests.sh [--check]
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PY" ] || PY=python3
[ -n "${HELM:-}" ] || "$ROOT/scripts/install-helm.sh" >/dev/null
"$PY" "$ROOT/scripts/gen_chart_docs.py" "$@"
exec "$PY" "$ROOT/scripts/render_manifests.py" "$@"
