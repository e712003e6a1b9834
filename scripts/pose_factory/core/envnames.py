"""The environment variables pose-sync reads or sets, by name: one place, so that a rename misses no reader
(tests/test_one_home.py finds any name written out elsewhere in the code).

It imports nothing: the virtualenv's start-up hook (envhook) reads it in every Python process it starts.
"""

# Secrets: only from the environment or the project's .env, never in a file the tool writes.
ENV_ACCESS_KEY = "CLOUDFLARE_R2_ACCESS_KEY_ID"
ENV_SECRET_KEY = "CLOUDFLARE_R2_SECRET_ACCESS_KEY"
ENV_RUNPOD_API_KEY = "RUNPOD_API_KEY"  # on the laptop your key; on a pod, RunPod's key limited to that pod
SECRET_ENV_NAMES = (ENV_ACCESS_KEY, ENV_SECRET_KEY, ENV_RUNPOD_API_KEY)

# Where the bucket is, and which settings are in effect.
ENV_ACCOUNT_ID = "CLOUDFLARE_R2_ACCOUNT_ID"
ENV_BUCKET = "POSE_FACTORY_R2_BUCKET"
ENV_ENDPOINT = "POSE_FACTORY_R2_ENDPOINT"
ENV_BACKEND = "POSE_FACTORY_BACKEND"
ENV_CONFIG = "POSE_FACTORY_CONFIG"
ENV_ROOT = "POSE_FACTORY_ROOT"
ENV_DVC_LOCAL_REMOTE = "POSE_FACTORY_DVC_LOCAL_REMOTE"

# The pod side: what `job submit` gives a pod, and what RunPod sets in it.
ENV_WORKER_SETTINGS = "POSE_FACTORY_WORKER_SETTINGS"
ENV_POD_ID = "RUNPOD_POD_ID"
ENV_ASSETS = "POSE_FACTORY_ASSETS"
ENV_BLENDER = "POSE_FACTORY_BLENDER"
ENV_BLENDER_THREADS = "POSE_FACTORY_BLENDER_THREADS"

# The start-up hook: "off" disables it; what it sets for DVC and botocore (names they read).
ENV_ENVHOOK = "POSE_FACTORY_ENVHOOK"
ENV_AWS_ACCESS_KEY = "AWS_ACCESS_KEY_ID"
ENV_AWS_SECRET_KEY = "AWS_SECRET_ACCESS_KEY"
ENV_AWS_REQUEST_CHECKSUM = "AWS_REQUEST_CHECKSUM_CALCULATION"
ENV_AWS_RESPONSE_CHECKSUM = "AWS_RESPONSE_CHECKSUM_VALIDATION"

# Tests and reproducible builds.
ENV_KILL_AT = "POSE_FACTORY_KILL_AT"  # core/killpoint: SIGKILL at a named step
ENV_SOURCE_DATE_EPOCH = "SOURCE_DATE_EPOCH"  # pins the manifests' timestamps (reproducible-builds.org)
