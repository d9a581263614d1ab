# giftrelay: the relay with its embedded Redis, or pointed at your own with GIFTRELAY_REDIS_URL.
FROM python:3.11-slim

RUN apt-get update \
 && apt-get install -y --no-install-recommends redis-server \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid 10001 giftrelay

WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
COPY loadtest ./loadtest
RUN pip install --no-cache-dir . && rm -rf /src

USER giftrelay
WORKDIR /home/giftrelay
ENV GIFTRELAY_HOST=0.0.0.0 \
    GIFTRELAY_PORT=8080 \
    GIFTRELAY_LOG_FORMAT=json
EXPOSE 8080
VOLUME ["/home/giftrelay/var"]
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('GIFTRELAY_PORT', '8080'), timeout=2)"
ENTRYPOINT ["giftrelay"]
CMD ["serve"]
