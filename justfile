# Strata's entry points. Run through ./just, which installs .venv from uv.lock on first use.

set positional-arguments

default:
    @just --list

# Run the whole stack in the foreground (embedded NATS + PostgreSQL unless NATS_URL/DATABASE_URL set)
up *args:
    @exec strata up "$@"

# Stream demo traffic into a running stack (reads $STRATA_DATA_DIR/dev.json)
demo *args:
    @exec strata demo "$@"

# Apply database migrations to DATABASE_URL
migrate:
    @strata migrate

# The whole test suite against real NATS JetStream and PostgreSQL (started on demand), in three
# worker processes (mostly waiting on servers, so more workers than cores); `-n 0` for one.
test *args:
    @python -m pytest -q -p no:cacheprovider -n 3 "$@"

# The tests that need neither NATS nor PostgreSQL (seconds, for the inner loop)
test-fast *args:
    @python -m pytest -q -p no:cacheprovider -m "not infra" "$@"

# Rewrite the generated-SQL snapshots (tests/snapshots) from the code; review `git diff` after
snapshots:
    rm -f tests/snapshots/*.sql
    STRATA_UPDATE_SNAPSHOTS=1 python -m pytest -q -p no:cacheprovider -m sql_snapshot

# Lint and format check
lint:
    ruff check .
    ruff format --check .

# Static types (strict on every package of libs/, services/, strata_cli/, strata_dev/ and bench/)
typecheck:
    mypy

# What CI gates: lint, format, types, then the whole test suite
ci: lint typecheck test

# Re-lock after editing pyproject.toml; `just lock --upgrade` moves every pin to the newest
# release (`--upgrade-package NAME`: one). Commit uv.lock + requirements-uv.txt on their own.
lock *args:
    uv lock "$@"
    uv export --frozen --only-group uv --no-emit-project --no-header --format requirements-txt --quiet -o requirements-uv.txt

# Benchmarks: prints figures and writes bench/results/latest.json
bench *args:
    @uv sync --frozen --quiet --group bench
    @# Byte-compile what the group added (ClickHouse's client, pandas), as ./just does the rest.
    @python -m compileall -q -j 0 -x '/oci/(?!(_vendor|auth|dns|object_storage|work_requests)/)[a-z0-9_]+/' "$(python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" >/dev/null
    @python -m bench "$@"

# Regenerate the JSON Schemas of the wire types (docs/schemas) from the msgspec Structs
schemas:
    python -m libs.common.schemas.jsonschema docs/schemas

# Render the Kubernetes base (deploy/k8s) as applied by `kubectl apply -k`
k8s:
    kubectl kustomize deploy/k8s

# Rebuild the browser tracker's minified script (services/ingest/tracker/strata.min.js)
tracker:
    sh services/ingest/tracker/build.sh

# Rebuild the dashboard's single-page app (services/query/dashboard/ui/dist) from its sources
dashboard:
    sh services/query/dashboard/ui/build.sh

# Take the screenshots of the main pages in docs/screenshots with the dashboard's browser tests
screenshots:
    STRATA_UPDATE_SCREENSHOTS=1 python -m pytest -q -p no:cacheprovider tests/integration/test_dashboard_browser.py

# Refresh axe-core for the dashboard's accessibility test (tests/support/axe/axe.min.js)
axe:
    sh tests/support/axe/build.sh

# Rebuild the bundle of Segment's analytics-next used by the compatibility test
# (tests/support/analytics_js/analytics-next.iife.js)
analytics-js:
    sh tests/support/analytics_js/build.sh
