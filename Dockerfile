# giftrelay: the relay (`giftrelay serve`), or with another command the ledger consumer
# (`giftrelay ledger`), reconcile, tokens... Two stages: the first installs exactly the
# versions in uv.lock (hash-checked) and the giftrelay wheel into a virtualenv; the second
# is python:3.11-slim with that virtualenv, redis-server (for the embedded default only)
# and a non-root user.
#
#   docker build -t giftrelay .
#   docker run -p 8080:8080 giftrelay                       # embedded Redis + SQLite ledger
#   docker run -e GIFTRELAY_REDIS_URL=redis://... -e GIFTRELAY_SECRET=... giftrelay serve --no-ledger
#
# tests/test_ops.py runs these build steps in a clean virtualenv (no Docker engine needed):
# keep each RUN a plain shell command over the paths below.

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml uv.lock README.md ./
COPY src ./src
COPY loadtest ./loadtest
# The lock tool at the version pyproject.toml requires; it only turns uv.lock into a
# hashed requirements list, and pip installs that list and nothing else.
RUN python -m pip install uv==0.13.9
RUN python -m uv export --frozen --no-emit-project --no-header --output-file requirements.txt
RUN python -m pip wheel --no-deps --wheel-dir /wheels .
RUN python -m venv /opt/giftrelay \
 && /opt/giftrelay/bin/pip install --require-hashes --no-deps -r requirements.txt \
 && /opt/giftrelay/bin/pip install --no-deps /wheels/giftrelay-*.whl

FROM python:3.11-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends redis-server \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid 10001 giftrelay \
 && install -d -o giftrelay -g giftrelay /home/giftrelay/var
COPY --from=build /opt/giftrelay /opt/giftrelay
USER giftrelay
WORKDIR /home/giftrelay
ENV PATH=/opt/giftrelay/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    GIFTRELAY_HOST=0.0.0.0 \
    GIFTRELAY_PORT=8080 \
    GIFTRELAY_LOG_FORMAT=json
EXPOSE 8080
VOLUME ["/home/giftrelay/var"]
# /healthz answers 200 while the process is up (readiness is /readyz: Redis reachable).
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('GIFTRELAY_PORT', '8080'), timeout=2)"]
ENTRYPOINT ["giftrelay"]
CMD ["serve"]
