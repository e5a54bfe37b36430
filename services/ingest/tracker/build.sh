#!/bin/sh
# Minify strata.js into strata.min.js, which ingest serves at GET /t.js. The banner records the
# source's hash so a test can tell when strata.min.js was not rebuilt after strata.js changed.
set -eu
cd "$(dirname "$0")"
npm ci --no-audit --no-fund --silent
source_hash=$(sha256sum strata.js | cut -c1-16)
./node_modules/.bin/esbuild strata.js --minify --target=es2020 --legal-comments=none \
  --banner:js="/*! strata.js src:$source_hash */" --outfile=strata.min.js --log-level=warning
gzip -9 -c strata.min.js | wc -c | xargs printf 'strata.min.js: %s bytes gzipped\n'
