# Strata's entry points. Run through ./just, which installs .venv on first use.

set positional-arguments

default:
    @just --list

# Run the whole stack in the foreground (embedded NATS + PostgreSQL unless NATS_URL/DATABASE_URL set)
up *args:
    strata up "$@"

# Stream demo traffic into a running stack (reads $STRATA_DATA_DIR/dev.json)
demo *args:
    strata demo "$@"

# Apply database migrations to DATABASE_URL
migrate:
    strata migrate

# The whole test suite against real NATS JetStream and PostgreSQL (started on demand)
test *args:
    python -m pytest -q -p no:cacheprovider "$@"

# Lint and format check
lint:
    ruff check .
    ruff format --check .

# Static types (strict on libs/common)
typecheck:
    mypy

# Benchmarks: prints figures and writes bench/results/latest.json
bench *args:
    python -c "import chdb" 2>/dev/null || python -m pip install -q -e '.[dev,bench]'
    python -m bench "$@"

# Regenerate the JSON Schemas of the wire types (docs/schemas) from the msgspec Structs
schemas:
    python -m libs.common.schemas.jsonschema docs/schemas

# Render the Kubernetes base (deploy/k8s) as applied by `kubectl apply -k`
k8s:
    kubectl kustomize deploy/k8s

# Rebuild the browser tracker's minified script (services/ingest/tracker/strata.min.js)
tracker:
    sh services/ingest/tracker/build.sh

# Rebuild the bundle of Segment's analytics-next used by the compatibility test
# (tests/support/analytics_js/analytics-next.iife.js)
analytics-js:
    sh tests/support/analytics_js/build.sh
