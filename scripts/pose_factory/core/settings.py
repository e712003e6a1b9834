"""Settings and secrets: one place.

Non-secret settings come from built-in defaults, overlaid by `config/local.yaml` when it exists
(validated against `schemas/config.schema.json`), then by environment overrides. Secrets come only from
the environment or a git-ignored `.env` at the project root (the environment wins over `.env`).
Nothing here ever puts a secret value in a message: errors name variables, not their contents.

Every YAML file the tool reads (settings, params.yaml) goes through `load_yaml`: a binary file, a syntax
error, nesting too deep or aliases that expand the document enormously ("billion laughs") is an error
naming the file, never a traceback or minutes of CPU.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pose_factory.core import schemas
from pose_factory.core.envnames import (
    ENV_ACCESS_KEY,
    ENV_ACCOUNT_ID,
    ENV_BACKEND,
    ENV_BUCKET,
    ENV_CONFIG,
    ENV_DVC_LOCAL_REMOTE,
    ENV_ENDPOINT,
    ENV_SECRET_KEY,
    SECRET_ENV_NAMES,
)
from pose_factory.core.errors import ConfigError, CredentialsError, PoseFactoryError
from pose_factory.core.layout import CONFIG_FILE, LOCAL_BUCKET, MIRROR, RAW, Layout, find_project_root, project_root

# A YAML document whose aliases (*name) expand it to more values than this is refused: hand-written
# settings never come close, and a "billion laughs" document would cost minutes of CPU in what reads it.
MAX_YAML_EXPANDED_VALUES = 10_000
MAX_YAML_DEPTH = 64

DEFAULTS: dict[str, Any] = {
    "bucket": "pose-factory",
    "storage": {
        "backend": "auto",
        "local_bucket_dir": LOCAL_BUCKET.as_posix(),
        "concurrency": 8,
        "max_attempts": 8,
        "connect_timeout_s": 10,
        "read_timeout_s": 60,
        "dvc_local_remote": "~/.local/share/pose-factory/dvc-remote",
    },
    "prefixes": {"batches": "batches/", "dvc": "dvc/", "jobs": "jobs/"},
    "rclone_remote": "r2_pose_factory",
    "batch_naming": {"pattern": "{date}_{project}", "date_format": "%Y-%m-%d"},
    "workflows": {},
    "comfyui": {"server": "http://127.0.0.1:8188", "queue_depth": 2, "timeout_s": 600,
                "upload_folder": "pose-factory-upload", "websocket": True},
    "runpod": {"api_url": "https://api.runpod.io/v2", "image": "ghcr.io/pose-factory/worker:latest",
               "gpu_type": "NVIDIA GeForce RTX 4090", "gpu_count": 1, "container_disk_gb": 40, "volume_gb": 0,
               "cloud_type": "SECURE", "hourly_price_usd": 0.69, "shutdown": "terminate", "job_timeout_s": 7200,
               "heartbeat_timeout_s": 300, "poll_s": 10, "startup_timeout_s": 900, "shard_attempts": 2,
               "max_pods": 16, "shutdown_retry_s": 600, "request_timeout_s": 30, "api_attempts": 5,
               "api_backoff_s": 0.5, "create_lookup_s": 10, "self_shutdown_s": 300, "worker_max_restarts": 3,
               "secrets": {}},
    "curation": {"reasons": ["limb through the floor", "skeleton does not match the render", "ugly camera angle",
                             "figure cut off by the frame", "other"],
                 "thumbnail_cache_mb": 512},
}


@dataclass(frozen=True)
class Prefixes:
    batches: str
    dvc: str
    jobs: str


@dataclass(frozen=True)
class ComfyUISettings:
    """`comfyui:` in the config: the server `pose-sync comfyui` talks to and how it queues."""

    server: str
    queue_depth: int
    timeout_s: float
    upload_folder: str
    websocket: bool


@dataclass(frozen=True)
class RunPodSettings:
    """`runpod:` in the config: the pods `pose-sync job` starts, and how patiently it watches them."""

    api_url: str
    image: str
    gpu_type: str
    gpu_count: int
    container_disk_gb: int
    volume_gb: int
    cloud_type: str
    hourly_price_usd: float
    shutdown: str
    job_timeout_s: float
    heartbeat_timeout_s: float
    poll_s: float
    startup_timeout_s: float
    shard_attempts: int
    max_pods: int
    shutdown_retry_s: float
    request_timeout_s: float
    api_attempts: int
    api_backoff_s: float
    create_lookup_s: float
    self_shutdown_s: float
    worker_max_restarts: int
    secrets: dict[str, str]  # pod environment variable -> RunPod secret name


@dataclass(frozen=True)
class CurationSettings:
    """`curation:` in the config."""

    reasons: list[str]
    thumbnail_cache_mb: int


@dataclass(frozen=True)
class Settings:
    """Every non-secret setting the tool reads, resolved to absolute paths."""

    root: Path
    config_file: Path | None
    bucket: str
    backend: str
    local_bucket_dir: Path
    concurrency: int
    max_attempts: int
    connect_timeout_s: float
    read_timeout_s: float
    dvc_local_remote: Path
    prefixes: Prefixes
    rclone_remote: str
    batch_pattern: str
    date_format: str
    workflows: dict[str, dict[str, Any]]  # name -> mapping (schemas/config.schema.json, workflows)
    comfyui: ComfyUISettings
    runpod: RunPodSettings
    curation: CurationSettings
    # False when a command that needs no project runs outside one: root is then the working directory.
    in_project: bool = True

    @property
    def layout(self) -> Layout:
        """Every folder of this project (core/layout.py)."""
        return Layout(self.root, self.local_bucket_dir)

    # Shorthands for the folders most commands use; each is the layout's.
    @property
    def mirror_dir(self) -> Path:
        return self.layout.mirror_dir

    @property
    def archive_dir(self) -> Path:
        return self.layout.archive_dir

    @property
    def transaction_dir(self) -> Path:
        return self.layout.transaction_dir

    @property
    def staging_dir(self) -> Path:
        return self.layout.staging_dir

    @property
    def seal_dir(self) -> Path:
        return self.layout.seal_dir

    @property
    def params_file(self) -> Path:
        return self.layout.params_file

    @property
    def curation_dir(self) -> Path:
        return self.layout.curation_dir

    @property
    def cache_dir(self) -> Path:
        return self.layout.cache_dir


@dataclass(frozen=True)
class R2Credentials:
    """What it takes to reach R2 (or any S3-compatible store). repr never shows the secret."""

    access_key_id: str = field(repr=False)
    secret_access_key: str = field(repr=False)
    endpoint_url: str
    account_id: str | None = field(default=None, repr=False)


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict) and key != "workflows":
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def yaml_text(data: bytes, label: str, *, error: type[PoseFactoryError] = ConfigError) -> str:
    """The text of a YAML file's bytes; a binary or non-UTF-8 file is `error` naming it."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"not UTF-8 text (byte {exc.start} is {data[exc.start]:#04x}): is it a binary file?", where=label,
                    hint="it must be a YAML text file; restore it from git (`git checkout -- <file>`)") from None
    if "\x00" in text:
        raise error(f"not a text file: NUL byte at offset {text.index(chr(0))}", where=label,
                    hint="it must be a YAML text file; restore it from git (`git checkout -- <file>`)")
    return text


def _yaml_shape(root: Any) -> tuple[int, int] | None:
    """(values once aliases are expanded, or 0 when no value is shared; deepest nesting) of a composed YAML
    document, counting stops past the bounds; None if an alias refers to a node that contains it.
    Without recursion, each node once."""
    def children(node: Any) -> list[Any]:
        value = getattr(node, "value", None)
        if not isinstance(value, list):
            return []
        return [part for item in value for part in (item if isinstance(item, tuple) else (item,))]

    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()
    deepest = 0
    pending: list[tuple[Any, bool, int]] = [(root, False, 1)]
    while pending:
        node, finished, depth = pending.pop()
        key = id(node)
        if finished:
            open_nodes.discard(key)
            sizes[key] = 1 + sum(sizes[id(child)] for child in children(node))
            if sizes[key] > MAX_YAML_EXPANDED_VALUES and sizes[key] > len(sizes):
                return sizes[key], deepest  # more values than nodes: aliases already expand it past the bound
            continue
        if key in sizes:
            continue
        if key in open_nodes:
            return None
        deepest = max(deepest, depth)
        if deepest > MAX_YAML_DEPTH:
            return 0, deepest
        open_nodes.add(key)
        pending.append((node, True, depth))
        pending.extend((child, False, depth + 1) for child in children(node) if id(child) not in sizes)
    return (sizes[id(root)] if sizes[id(root)] > len(sizes) else 0), deepest


def load_yaml(text: str, label: str, *, error: type[PoseFactoryError] = ConfigError, round_trip: bool = False,
              hint: str | None = None) -> Any:
    """Parse one YAML document safely; every way it can be bad is `error` naming the file.

    The document is first composed by libyaml (C, fast, bounded nesting) to check its shape: aliases may
    not expand it beyond MAX_YAML_EXPANDED_VALUES values or into itself, nor may it nest deeper than
    MAX_YAML_DEPTH. Then it is loaded: round_trip keeps comments and order (ruamel.yaml, for files the tool
    rewrites); otherwise PyYAML's safe loader.
    """
    import yaml  # only when there is a YAML file to read: every command starts faster without it

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    hint = hint or "fix the YAML (indentation and colons)"
    try:
        root = yaml.compose(text, Loader=loader)
    except RecursionError:
        raise error("YAML nested too deeply", where=label, hint=hint) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise error(f"malformed YAML{at}: {problem}", where=label, hint=hint) from None
    shape = _yaml_shape(root) if root is not None else (0, 0)
    if shape is None:
        raise error("an alias (*name) refers to a value that contains it", where=label, hint=hint)
    expanded, depth = shape
    if expanded > MAX_YAML_EXPANDED_VALUES:
        raise error(f"aliases (*name) expand the document to more than {MAX_YAML_EXPANDED_VALUES:,} values",
                    where=label, hint="write the values out; a document like this (a 'billion laughs' bomb) is "
                                      "refused")
    if depth > MAX_YAML_DEPTH:
        raise error(f"YAML nested deeper than {MAX_YAML_DEPTH} levels", where=label, hint=hint)
    if not round_trip:
        return yaml.load(text, Loader=loader)
    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError

    try:
        return YAML().load(text)
    except YAMLError as exc:  # what libyaml accepted but YAML 1.2 does not
        raise error(f"malformed YAML: {getattr(exc, 'problem', None) or exc}", where=label, hint=hint) from None


def _read_config_file(path: Path) -> dict[str, Any]:
    label = str(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the config file: {exc.strerror}", where=label) from None
    data = load_yaml(yaml_text(raw, label), label,
                     hint="compare with config/local.example.yaml (indentation and colons)")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"expected a mapping of settings at the top level, found {type(data).__name__}",
                          where=label, hint="see config/local.example.yaml for the shape")
    _check_data_root(data, label)
    found = schemas.problems(data, "config", label)
    if found:
        first = found[0]
        key = first.field.removeprefix("$.")
        more = f" (and {len(found) - 1} more problem(s))" if len(found) > 1 else ""
        raise ConfigError(f"key '{key}': expected {first.expected}, found {first.found}{more}", where=label,
                          hint="see config/local.example.yaml for every key and its default")
    return data


def _check_data_root(data: dict[str, Any], label: str) -> None:
    """data_root is no longer a setting: the data folders are part of the repository (dvc.yaml names them, git
    records the .dvc files in them), so one clone cannot move them. The old default is still accepted, so a
    copy of an older config/local.example.yaml keeps working."""
    value = data.pop("data_root", None)
    if value is None or (isinstance(value, str) and Path(value) == RAW):
        return
    raise ConfigError(f"data_root is {value!r}, but it is no longer a setting: the data folders are part of the "
                      f"repository (dvc.yaml and the .dvc files git records name {MIRROR})",
                      where=f"{label}: data_root",
                      hint="remove the data_root line; to keep the data on another disk, put the whole project "
                           "there")


def load_dotenv(root: Path) -> None:
    """Load `<root>/.env` into the environment without overriding what is already set.

    Read by envhook.read_dotenv, the reader the virtualenv's start-up hook uses for `dvc` too.
    """
    env_file = root / ".env"
    if env_file.is_file():
        from pose_factory.core.envhook import read_dotenv

        for key, value in read_dotenv(env_file).items():
            if key not in os.environ:
                os.environ[key] = value


def load_settings(root: Path | None = None, config_file: Path | None = None, *, require_project: bool = True
                  ) -> Settings:
    """Defaults, overlaid by the config file (if any), overlaid by environment overrides.

    Outside a project: RepositoryError, or with require_project=False settings rooted at the working
    directory with no project files read (no .env, no config/local.yaml).
    """
    in_project = True
    if root is None:
        root = project_root() if require_project else find_project_root()
    if root is None:
        root, in_project = Path.cwd().resolve(), False
    else:
        load_dotenv(root)
    if config_file is None and os.environ.get(ENV_CONFIG):
        config_file = Path(os.environ[ENV_CONFIG])
        if not config_file.is_file():
            raise ConfigError(f"the config file named by {ENV_CONFIG} does not exist", where=str(config_file),
                              hint=f"point {ENV_CONFIG} at a YAML file or unset it")
    if config_file is None and in_project and (root / CONFIG_FILE).is_file():
        config_file = root / CONFIG_FILE
    merged = _deep_merge(DEFAULTS, _read_config_file(config_file) if config_file else {})
    storage = merged["storage"]
    backend = os.environ.get(ENV_BACKEND) or storage["backend"]
    if backend not in ("auto", "local", "r2"):
        raise ConfigError(f"expected one of auto, local, r2, found {backend!r}", where=ENV_BACKEND)
    return Settings(
        root=root,
        config_file=config_file,
        bucket=os.environ.get(ENV_BUCKET) or merged["bucket"],
        backend=backend,
        local_bucket_dir=(root / storage["local_bucket_dir"]).resolve(),
        concurrency=storage["concurrency"],
        max_attempts=storage["max_attempts"],
        connect_timeout_s=float(storage["connect_timeout_s"]),
        read_timeout_s=float(storage["read_timeout_s"]),
        dvc_local_remote=Path(os.environ.get(ENV_DVC_LOCAL_REMOTE) or storage["dvc_local_remote"]).expanduser(),
        prefixes=Prefixes(**merged["prefixes"]),
        rclone_remote=merged["rclone_remote"],
        batch_pattern=merged["batch_naming"]["pattern"],
        date_format=merged["batch_naming"]["date_format"],
        workflows=merged["workflows"],
        # The schema allows only these sections' keys, and DEFAULTS gives every one a value.
        comfyui=ComfyUISettings(**merged["comfyui"]),
        runpod=RunPodSettings(**merged["runpod"]),
        curation=CurationSettings(**merged["curation"]),
        in_project=in_project,
    )


def r2_credentials(*, required: bool) -> R2Credentials | None:
    """R2 credentials from the environment; None when none are set and they are not required.

    Partly set credentials are always an error: silently falling back to the local bucket would
    make a user believe they pushed to R2.
    """
    key = os.environ.get(ENV_ACCESS_KEY, "").strip()
    secret = os.environ.get(ENV_SECRET_KEY, "").strip()
    account = os.environ.get(ENV_ACCOUNT_ID, "").strip()
    endpoint = os.environ.get(ENV_ENDPOINT, "").strip()
    if not (key or secret) and not required:
        return None
    missing = [name for name, value in ((ENV_ACCESS_KEY, key), (ENV_SECRET_KEY, secret)) if not value]
    if not endpoint and not account:
        missing.append(ENV_ACCOUNT_ID)
    if missing:
        raise CredentialsError(
            "R2 credentials are incomplete: " + ", ".join(missing) + " not set",
            where="environment / .env",
            hint="set them in the environment or in .env at the project root (see README, 'Connect a real R2 "
                 f"bucket'); set {ENV_ENDPOINT} instead of the account id for another S3 store",
        )
    endpoint_url = endpoint or f"https://{account}.r2.cloudflarestorage.com"
    return R2Credentials(key, secret, endpoint_url, account or None)


def resolve_backend(settings: Settings, requested: str | None = None) -> tuple[str, R2Credentials | None]:
    """('local', None) or ('r2', credentials) for the backend asked for (CLI flag, env, config, auto)."""
    choice = requested or settings.backend
    if choice == "local":
        return "local", None
    credentials = r2_credentials(required=choice == "r2")
    return ("r2", credentials) if credentials else ("local", None)


def secret_values() -> list[str]:
    """The secret values currently set, for scrubbing text before it is shown or written."""
    return [v for v in (os.environ.get(n, "") for n in SECRET_ENV_NAMES) if len(v) >= 4]


def redact(text: str) -> str:
    """Replace every known secret value in text with '***'."""
    for value in secret_values():
        text = text.replace(value, "***")
    return text


def backend_reason(settings: Settings, requested: str | None = None) -> str:
    """Why resolve_backend picks the backend it picks, in words (`pose-sync config` shows it)."""
    if requested:
        return f"--backend {requested}"
    if os.environ.get(ENV_BACKEND):
        return f"{ENV_BACKEND}={os.environ[ENV_BACKEND]}"
    if settings.backend != "auto":
        return f"storage.backend is {settings.backend} in {settings.config_file}"
    if r2_credentials(required=False):
        return "auto: R2 credentials are set"
    return f"auto: no R2 credentials ({ENV_ACCESS_KEY}, ...) in the environment or .env"
