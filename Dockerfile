# xmodal. CPU image:  docker build -t xmodal .
# NVIDIA GPU image:   docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 -t xmodal:cuda .
#                     (torch's CUDA wheels carry their CUDA libraries; run with --gpus all)
# Ray cluster image:  docker build --build-arg EXTRAS=ray-node -t xmodal:ray .   (compose: --profile ray)
FROM python:3.11-slim-bookworm

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
# pyproject extras to install, comma-separated (e.g. ray-node: ray and its dashboard); none by default
ARG EXTRAS=""
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HF_HOME=/data/hf \
    XMODAL_INDEX=/data/index \
    XMODAL_HOST=0.0.0.0 \
    XMODAL_PORT=8000

WORKDIR /opt/xmodal
COPY requirements-torch.txt ./
RUN pip install --index-url "${TORCH_INDEX}" -r requirements-torch.txt
COPY pyproject.toml README.md ./
COPY app ./app
COPY indexer ./indexer
COPY models ./models
# The project itself, with EXTRAS when given: versions are bounded in pyproject.toml, not here.
# hadolint ignore=DL3013
RUN pip install ".${EXTRAS:+[${EXTRAS}]}"

RUN useradd --create-home --uid 10001 xmodal && mkdir -p /data && chown 10001 /data
USER 10001
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=2).status != 200)"]
ENTRYPOINT ["xmodal"]
CMD ["serve"]
