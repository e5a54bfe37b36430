#!/bin/sh
# Bundle Segment's @segment/analytics-next (pinned in package.json and package-lock.json) into one
# self-contained IIFE, analytics-next.iife.js, for tests/integration/test_segment_analytics_js.py.
# Its lazily imported chunks are inlined (no code splitting), so a page never fetches code from
# Segment's CDN.
set -eu
cd "$(dirname "$0")"
npm ci --no-audit --no-fund --silent
./node_modules/.bin/esbuild entry.js --bundle --minify --format=iife \
  --global-name=SegmentAnalytics --target=es2020 --legal-comments=none \
  --outfile=analytics-next.iife.js --log-level=warning
wc -c < analytics-next.iife.js | xargs printf 'analytics-next.iife.js: %s bytes\n'
