# Strata: one image for every service. Each Kubernetes workload picks its service with
# `command: ["python", "-m", "services.<name>"]` (the migration Job runs `strata migrate`),
# so the image sets no CMD of its own. It holds the runtime lock only: no embedded servers,
# no test tools, no local-stack supervisor or demo generator (strata_dev).
FROM python:3.11-slim AS build

ENV UV_PYTHON_DOWNLOADS=never \
    UV_LINK_MODE=copy \
    UV_PROJECT_ENVIRONMENT=/opt/strata/venv \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# uv itself, pinned with hashes, then exactly the runtime part of uv.lock; a layer that a code
# change reuses.
COPY requirements-uv.txt ./
RUN pip install --no-deps --require-hashes -r requirements-uv.txt
COPY pyproject.toml uv.lock ./
RUN uv sync --frozen --no-dev --no-install-project \
 # Byte-compile (the root filesystem is read-only at run time), except the OCI SDK's ~150
 # service clients Strata never imports: that alone would add ~250 MB of .pyc files.
 && python -m compileall -q -j 0 \
      -x '/oci/(?!(_vendor|auth|dns|object_storage|work_requests)/)[a-z0-9_]+/' \
      /opt/strata/venv/lib/python3.11/site-packages

# The code: the runtime (libs, services) and the operator CLI (strata_cli), byte-compiled.
COPY libs ./libs
COPY services ./services
COPY strata_cli ./strata_cli
RUN mkdir -p /opt/strata/app \
 && cp -r libs services strata_cli /opt/strata/app/ \
 && /opt/strata/venv/bin/python -m compileall -q /opt/strata/app \
 && printf '#!/opt/strata/venv/bin/python\nfrom strata_cli.main import main\nmain()\n' \
      > /opt/strata/venv/bin/strata \
 && chmod 755 /opt/strata/venv/bin/strata


FROM python:3.11-slim

# tzdata: project time zones (midnight session splits, query `timezone`) need the IANA database.
RUN apt-get update \
 && apt-get install -y --no-install-recommends tzdata \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 strata \
 && useradd --system --uid 10001 --gid strata --home-dir /home/strata --create-home \
      --shell /usr/sbin/nologin strata \
 && install -d -o strata -g strata /var/lib/strata

COPY --from=build /opt/strata /opt/strata

ENV PATH=/opt/strata/venv/bin:$PATH \
    PYTHONPATH=/opt/strata/app \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

# The compiled funnel kernel's cache (Numba) where the root file system is read-only: the
# Kubernetes query pod's /tmp is an emptyDir.
ENV NUMBA_CACHE_DIR=/tmp/numba

# Numeric user so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001
WORKDIR /home/strata
