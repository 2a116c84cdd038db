#!/usr/bin/env bash
# Build the LLaMA / Llama-2 tokenizer (the one Vicuna-7B v1.5 uses: 32,000 tokens) as a HF folder
# at .tools/llama-tokenizer/ (gitignored), for tests that need the real 7B vocabulary offline.
#
# The vocabulary and merges come from the npm package llama-tokenizer-js@1.2.2 (npm is the one
# registry CI machines can reach; npm checks the package's integrity, this script the tarball's
# sha256). scripts/build_llama_tokenizer.py rebuilds tokenizer.json with the `tokenizers` library
# and checks it against every id list the package's own tests expect, before anything is written.
#
#   scripts/install-llama-tokenizer.sh          # no-op when the folder is already built
#   LLAMA_TOKENIZER_DIR=/opt/tok PYTHON=.venv/bin/python scripts/install-llama-tokenizer.sh
#
# Exit 3 when npm or its registry cannot be reached (tests skip then), 1 on any other failure.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DEST="${LLAMA_TOKENIZER_DIR:-$ROOT/.tools/llama-tokenizer}"
PYTHON="${PYTHON:-python3}"
NPM_PACKAGE="llama-tokenizer-js@1.2.2"
TGZ_SHA256="ee83014ac8b379b16cf8d81e99ffcdb23dfade8c0d2e751bd06e7dc0b8476e72"

if [ -f "$DEST/tokenizer.json" ] && [ "$(cat "$DEST/.source" 2>/dev/null)" = "$NPM_PACKAGE $TGZ_SHA256" ]; then
  echo "$DEST"
  exit 0
fi
command -v npm >/dev/null || { echo "install-llama-tokenizer.sh: npm not found" >&2; exit 3; }

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "$NPM_PACKAGE" >/dev/null) || {
  echo "install-llama-tokenizer.sh: npm pack $NPM_PACKAGE failed (registry unreachable?)" >&2; exit 3; }
printf '%s  %s\n' "$TGZ_SHA256" "$(ls "$tmp"/*.tgz)" | sha256sum --check --status || {
  echo "install-llama-tokenizer.sh: sha256 of $NPM_PACKAGE does not match the pinned value" >&2; exit 1; }
tar -xzf "$tmp"/*.tgz -C "$tmp" package/llama-tokenizer.js package/LICENSE.md
"$PYTHON" "$ROOT/scripts/build_llama_tokenizer.py" "$tmp/package/llama-tokenizer.js" "$tmp/out" >&2
cp "$tmp/package/llama-tokenizer.js" "$tmp/package/LICENSE.md" "$tmp/out/"   # the source and its expectations
echo "$NPM_PACKAGE $TGZ_SHA256" > "$tmp/out/.source"
mkdir -p "$(dirname "$DEST")"
rm -rf "$DEST.tmp.$$" && mv "$tmp/out" "$DEST.tmp.$$" && rm -rf "$DEST" && mv "$DEST.tmp.$$" "$DEST"
echo "$DEST"
