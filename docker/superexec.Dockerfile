# syntax=docker/dockerfile:1
#
# fedprune's SuperExec image: runs the ServerApp (server machine) or the
# ClientApp (devices). The app's code is not in the image: `flwr run` sends it
# as a bundle at run time; the image adds only the app's Python dependencies.
#
# CPU, linux/amd64 and linux/arm64 (Raspberry Pi 4/5 on a 64-bit OS), from
# Flower's official image; the default target:
#
#   docker buildx build --platform linux/amd64,linux/arm64 \
#     -f docker/superexec.Dockerfile -t <registry>/fedprune-superexec:latest --push .
#
# Jetson (linux/arm64, CUDA), on an NVIDIA PyTorch image for the board's JetPack,
# which must have Python >= 3.11 (Flower 1.41 needs it; the build stops otherwise):
#
#   docker buildx build --platform linux/arm64 --target jetson \
#     --build-arg JETSON_BASE=<nvidia pytorch image for your JetPack> \
#     -f docker/superexec.Dockerfile -t fedprune-superexec:jetson --load .
#
# Build from the repository root (the context needs pyproject.toml).

# Flower's image tag: the flwr pin of constraints.txt (tests/test_versions.py checks it).
ARG FLWR_VERSION=1.41.0
# An example, not verified here: an NVIDIA PyTorch image with Python 3.12 for
# JetPack 7 boards. JetPack 5/6 L4T images ship Python 3.8/3.10 and cannot run
# Flower 1.41. See docker/README.md.
ARG JETSON_BASE=nvcr.io/nvidia/pytorch:25.08-py3

# --- Jetson: NVIDIA's PyTorch (CUDA for the board's GPU) plus Flower ------------
FROM ${JETSON_BASE} AS jetson
ARG FLWR_VERSION
COPY pyproject.toml constraints.txt docker/app_requirements.py /tmp/fedprune/
# The base keeps its own torch (and NVIDIA's pip constraints), so the project's pins
# apply to everything but torch; Flower and the app's other dependencies come from
# PyPI. Like Flower's images, the SuperExec runs as user app (uid 49999).
RUN python3 /tmp/fedprune/app_requirements.py --check-base \
    && python3 /tmp/fedprune/app_requirements.py /tmp/fedprune/pyproject.toml > /tmp/fedprune/requirements.txt \
    && grep -v '^torch==' /tmp/fedprune/constraints.txt > /tmp/fedprune/constraints-jetson.txt \
    && python3 -m pip install --no-cache-dir -c /tmp/fedprune/constraints-jetson.txt \
        "flwr==${FLWR_VERSION}" -r /tmp/fedprune/requirements.txt \
    && rm -rf /tmp/fedprune \
    && groupadd --gid 49999 app \
    && useradd --uid 49999 --gid 49999 --create-home --shell /usr/sbin/nologin app \
    && mkdir -p /app && chown 49999:49999 /app
USER 49999:49999
WORKDIR /app
ENTRYPOINT ["flower-superexec"]

# --- CPU (amd64, arm64): Flower's official SuperExec image plus CPU PyTorch -------
FROM flwr/superexec:${FLWR_VERSION} AS cpu
ARG FLWR_VERSION
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
COPY --chown=app:app pyproject.toml constraints.txt docker/app_requirements.py /tmp/fedprune/
# Every version comes from the repository's constraints.txt (torch's too). PyTorch's
# CPU index has amd64 and arm64 wheels; installing torch from it first keeps pip from
# pulling the CUDA build (and its 2+ GB of NVIDIA libraries) on amd64.
RUN python /tmp/fedprune/app_requirements.py /tmp/fedprune/pyproject.toml > /tmp/fedprune/requirements.txt \
    && python -m pip install --no-cache-dir --index-url "${TORCH_INDEX}" -c /tmp/fedprune/constraints.txt torch \
    && python -m pip install --no-cache-dir -c /tmp/fedprune/constraints.txt \
        "flwr==${FLWR_VERSION}" -r /tmp/fedprune/requirements.txt \
    && rm -rf /tmp/fedprune
WORKDIR /app
ENTRYPOINT ["flower-superexec"]
