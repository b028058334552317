# CASS Label Studio ML backend (label-studio-ml 1.0.9 under gunicorn).
#
#   docker build -t cass-backend .                                   # CPU torch wheels
#   docker build -t cass-backend:gpu --build-arg TORCH_INDEX=https://pypi.org/simple .   # PyPI torch = CUDA build
#
# The official weights (OpenAI CLIP ViT-B/16, DINO ViT-B/8) are downloaded into $CASS_MODEL_DIR on the
# first start unless they are already there: mount a volume on /models to keep them.
FROM python:3.11-slim

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN apt-get update \
    && apt-get install -y --no-install-recommends curl libgomp1 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY requirements.txt ./
RUN pip install --extra-index-url "${TORCH_INDEX}" -r requirements.txt

COPY cass/ cass/
COPY backend/ backend/

RUN useradd --create-home --uid 1000 cass && mkdir -p /models && chown cass:cass /models
USER cass

ENV CASS_MODEL_DIR=/models \
    CASS_CLIP_WEIGHTS=openai \
    CASS_DINO_WEIGHTS=dino_vitb8 \
    CASS_PRESET=default \
    PORT=9090 \
    WORKERS=1 \
    THREADS=20 \
    LOG_LEVEL=INFO \
    MALLOC_ARENA_MAX=2
VOLUME ["/models"]
EXPOSE 9090

# /health answers once the engine is loaded (first start: weight download + load can take minutes)
HEALTHCHECK --interval=30s --timeout=5s --start-period=900s --retries=3 \
    CMD curl -fsS "http://127.0.0.1:${PORT}/health" || exit 1

# one worker holds one copy of the model; threads keep /health and /setup answering during /predict.
# THREADS >= CASS_INFERENCE_SLOTS + CASS_MAX_QUEUE + 3 (defaults 1 + 16 + 3): a /predict beyond the queue is
# answered 503 "busy" at once instead of waiting for a free thread (docs/security.md). MALLOC_ARENA_MAX=2
# keeps glibc from growing one malloc arena per thread (measured: ~450 MiB less resident memory under load).
# backend/http/gunicorn_conf.py reads PORT, WORKERS and THREADS, and adds connection deadlines: request line and
# headers within CASS_HEADER_TIMEOUT_S (10 s), then CASS_BODY_IDLE_S (30 s) without a byte at most (docs/security.md).
CMD ["gunicorn", "-c", "python:backend.http.gunicorn_conf", "backend._wsgi:app"]
