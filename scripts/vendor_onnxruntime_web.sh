#!/usr/bin/env bash
# Refresh service/static/vendor/onnxruntime-web/ from the npm package onnxruntime-web at a pinned
# version: the files the viewer needs to run the student's graphs in the browser, and nothing else.
#
#   scripts/vendor_onnxruntime_web.sh            # the pinned version below
#   ORT_WEB_VERSION=1.30.0 scripts/vendor_onnxruntime_web.sh
#
# Kept (from the package's dist/):
#   ort.wasm.min.mjs + ort-wasm-simd-threaded.{mjs,wasm}                  WASM, SIMD + threads
#   ort.webgpu.min.mjs + ort-wasm-simd-threaded.asyncify.{mjs,wasm}       WebGPU (and WASM)
# The .wasm files are stored gzip-compressed (.wasm.gz, 14 + 27 MB -> 3.7 + 6.6 MB); the service
# sends them as they are with Content-Encoding: gzip (service/routers/graphs.py).
# Needs npm (registry access) and gzip; run from anywhere. Nothing is fetched at run time.
set -euo pipefail

VERSION="${ORT_WEB_VERSION:-1.30.0}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="$ROOT/service/static/vendor/onnxruntime-web"
KEEP_PLAIN=(ort.wasm.min.mjs ort-wasm-simd-threaded.mjs ort.webgpu.min.mjs ort-wasm-simd-threaded.asyncify.mjs)
KEEP_GZIP=(ort-wasm-simd-threaded.wasm ort-wasm-simd-threaded.asyncify.wasm)

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
(cd "$WORK" && npm pack --silent "onnxruntime-web@$VERSION" >/dev/null)
tar -xzf "$WORK"/onnxruntime-web-"$VERSION".tgz -C "$WORK"
PKG="$WORK/package"
got="$(node -p "require('$PKG/package.json').version" 2>/dev/null || sed -n 's/.*"version": *"\([^"]*\)".*/\1/p' "$PKG/package.json" | head -1)"
[ "$got" = "$VERSION" ] || { echo "npm gave onnxruntime-web $got, wanted $VERSION" >&2; exit 1; }
license="$(sed -n 's/.*"license": *"\([^"]*\)".*/\1/p' "$PKG/package.json" | head -1)"
[ "$license" = "MIT" ] || { echo "onnxruntime-web $VERSION declares license '$license', not MIT" >&2; exit 1; }

rm -rf "$DEST"
mkdir -p "$DEST"
{
  echo "onnxruntime-web $VERSION (npm), files from its dist/; sha256 of each as published:"
  for f in "${KEEP_PLAIN[@]}"; do
    cp "$PKG/dist/$f" "$DEST/$f"
    echo "$(sha256sum "$PKG/dist/$f" | cut -d' ' -f1)  $f"
  done
  for f in "${KEEP_GZIP[@]}"; do
    gzip -9 -n -c "$PKG/dist/$f" >"$DEST/$f.gz"
    echo "$(sha256sum "$PKG/dist/$f" | cut -d' ' -f1)  $f (stored as $f.gz)"
  done
} >"$DEST/VERSION"

# The package declares MIT in package.json and ships no LICENSE file; its README points to the
# onnxruntime repository's LICENSE, which is this text.
cat >"$DEST/LICENSE" <<'EOF'
onnxruntime-web is part of ONNX Runtime (https://github.com/microsoft/onnxruntime).

MIT License

Copyright (c) 2018 - present Microsoft Corporation

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
EOF

echo "onnxruntime-web $VERSION -> $DEST ($(du -sh "$DEST" | cut -f1))"
