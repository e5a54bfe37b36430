# Strata: one image for every service. Each Kubernetes workload picks its service with
# `command: ["python", "-m", "services.<name>"]` (the migration Job runs `strata migrate`),
# so the image sets no CMD of its own.
FROM python:3.11-slim AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/strata/venv
ENV PATH=/opt/strata/venv/bin:$PATH

WORKDIR /src
# Dependencies first, from pyproject.toml alone, so a code change reuses this (large) layer.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt

COPY libs ./libs
COPY services ./services
# A regular (non-editable) install: the code and its package data (migrations) live in the venv,
# byte-compiled by pip (the root filesystem is read-only at run time).
RUN pip install --no-deps .


FROM python:3.11-slim

# tzdata: project time zones (midnight session splits, query `timezone`) need the IANA database.
RUN apt-get update \
 && apt-get install -y --no-install-recommends tzdata \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 strata \
 && useradd --system --uid 10001 --gid strata --home-dir /home/strata --create-home \
      --shell /usr/sbin/nologin strata \
 && install -d -o strata -g strata /var/lib/strata

COPY --from=build /opt/strata/venv /opt/strata/venv

ENV PATH=/opt/strata/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

# Numeric user so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001
WORKDIR /home/strata
