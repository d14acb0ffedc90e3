# The pipeline's environment: Python 3.11 (onnx2tf 1.29.24's newest-supported line), CPU torch, Fashion-MNIST.
FROM python:3.11-slim-bookworm

# Debian's Fashion-MNIST package: the embedded default dataset; the OpenSSH client for
# `pipeline bench --host` and jemalloc, which the pipeline command runs on (pipeline/allocator.py) (both unpinned:
# Debian's security updates replace their versions).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends dataset-fashion-mnist=0.0~git20200523.55506a9-1 openssh-client libjemalloc2 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/pipeline
COPY pyproject.toml README.md ./
COPY pipeline ./pipeline
COPY board_runtime ./board_runtime
COPY targets ./targets

# torch==2.13.0 first, from the CPU index, so that no CUDA build is pulled in.
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu \
    && pip install --no-cache-dir .

WORKDIR /work
ENTRYPOINT ["pipeline"]
CMD ["run", "--target", "raspberry-pi-4"]
