# flux-service for a CUDA host.
#
#   docker build -t flux-service .
#   docker run --gpus all -p 8000:8000 -v /srv/flux/models:/app/models flux-service
#
# /app/models is a volume: put the FLUX.1 weights in <volume>/flux1-dev (diffusers layout), the task LoRAs
# where tasks.toml points (e.g. <volume>/lora/host_person), and tasks.toml itself (a copy ships in the image
# and fills an empty named volume on first use; a bind-mounted host folder must bring its own). Settings are
# FLUX_* environment variables (e.g. -e FLUX_API_KEY=...); nothing is downloaded at run time.
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    FLUX_MODELS_DIR=/app/models \
    FLUX_PORT=8000

RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin flux

WORKDIR /app
# the base image's CUDA torch satisfies `torch>=2.4`, so pip keeps it and adds the rest
COPY pyproject.toml README.md model_manager.py ./
COPY pipelines ./pipelines
COPY training ./training
COPY app ./app
COPY cli ./cli
RUN pip install . && flux-service --help > /dev/null

COPY models/tasks.toml models/glossary.toml ./models/
RUN chown -R flux:flux /app/models

USER flux
VOLUME ["/app/models"]
EXPOSE 8000

# /health answers while the event loop runs; start-period covers loading FLUX.1 from disk
HEALTHCHECK --interval=30s --timeout=5s --start-period=600s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('FLUX_PORT', '8000'), timeout=4)"

ENTRYPOINT ["flux-service"]
CMD ["serve", "--host", "0.0.0.0"]
