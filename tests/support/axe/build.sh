#!/bin/sh
# Copy axe-core's browser build (pinned in package.json and package-lock.json) to axe.min.js,
# which tests/integration/test_dashboard_browser.py injects into the dashboard's pages.
set -eu
cd "$(dirname "$0")"
npm ci --no-audit --no-fund --silent
cp node_modules/axe-core/axe.min.js axe.min.js
wc -c < axe.min.js | xargs printf 'axe.min.js: %s bytes\n'
