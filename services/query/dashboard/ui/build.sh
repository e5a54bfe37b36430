#!/bin/sh
# Bundle the dashboard (src/, dependencies pinned in package-lock.json) into dist/, which the
# query service serves. app.js's banner records a hash of the sources and the lock file, so a
# test can tell when dist/ was not rebuilt after they changed (tests/unit/test_dashboard_assets.py).
set -eu
cd "$(dirname "$0")"
npm ci --no-audit --no-fund --silent
source_hash=$(find src package-lock.json -type f | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -c1-16)
mkdir -p dist
./node_modules/.bin/esbuild src/main.jsx --bundle --minify --format=iife --target=es2020 \
  --jsx=automatic --jsx-import-source=preact --legal-comments=none \
  --loader:.json=json --banner:js="/*! strata dashboard src:$source_hash */" \
  --outfile=dist/app.js --log-level=warning
./node_modules/.bin/esbuild src/app.css --bundle --minify --outfile=dist/app.css --log-level=warning
cp src/index.html dist/index.html
for f in dist/app.js dist/app.css; do
  gzip -9 -c "$f" | wc -c | xargs printf "$f: %s bytes gzipped\n"
done
