"""Make plain `dvc` commands in this virtualenv talk to R2 correctly, with nothing exported by hand.

dvc-s3 has no setting for botocore's checksum behaviour, which R2 rejects by default, and reads
credentials only from AWS_* variables or `.dvc/config.local`. `make setup` installs a `.pth` file into
the virtualenv so that every Python process started from it (`dvc`, `pose-sync`, `python`) runs
`apply()` at start-up: it sets the two checksum variables to `when_required` and, inside a Pose Factory
project, maps the R2 credentials from the environment or the project's `.env` to the AWS_* names dvc
reads. Nothing is written to disk and nothing is set that the user has already set.
"""

from __future__ import annotations

import os
import sys
import sysconfig
from pathlib import Path

from pose_factory.core.envnames import (
    ENV_ACCESS_KEY,
    ENV_AWS_ACCESS_KEY,
    ENV_AWS_REQUEST_CHECKSUM,
    ENV_AWS_RESPONSE_CHECKSUM,
    ENV_AWS_SECRET_KEY,
    ENV_ENVHOOK,
    ENV_ROOT,
    ENV_SECRET_KEY,
)

CHECKSUM_SETTINGS = {ENV_AWS_REQUEST_CHECKSUM: "when_required", ENV_AWS_RESPONSE_CHECKSUM: "when_required"}
CREDENTIAL_MAP = {ENV_ACCESS_KEY: ENV_AWS_ACCESS_KEY, ENV_SECRET_KEY: ENV_AWS_SECRET_KEY}
DISABLE_VARIABLE = ENV_ENVHOOK  # set to "off" to see what happens without the hook
PTH_NAME = "pose_factory_r2_env.pth"
PTH_LINE = ("import os; exec(\"try:\\n import pose_factory.core.envhook as _pf\\n _pf.apply()\\n"
            "except Exception:\\n pass\")"
            f" if os.environ.get('{ENV_ENVHOOK}') != 'off' else None\n")


def _project_dotenv(start: Path, environ: os._Environ | dict) -> Path | None:
    """The project's `.env`, found the way `pose-sync` finds the project (POSE_FACTORY_ROOT, else the
    nearest folder above start holding `.dvc/` and `config/`)."""
    override = environ.get(ENV_ROOT)
    folders = [Path(override).expanduser()] if override else [start, *start.parents]
    for folder in folders:
        if override or ((folder / ".dvc").is_dir() and (folder / "config").is_dir()):
            candidate = folder / ".env"
            return candidate if candidate.is_file() else None
    return None


def read_dotenv(path: Path) -> dict[str, str]:
    """The variables a `.env` file sets, read by python-dotenv: the one reader of `.env` everywhere.

    `pose-sync` (core/settings.load_dotenv) and this start-up hook (so `dvc`) both use it, so they agree on
    comments after values, quotes, `export` prefixes and spaces. Keys without a value are left out.
    """
    from dotenv import dotenv_values

    try:
        values = dotenv_values(path)
    except UnicodeDecodeError as exc:  # the message names the byte, never the file's content (it holds secrets)
        from pose_factory.core.errors import ConfigError

        raise ConfigError(f"the file is not UTF-8 text (byte {exc.start} cannot be read)", where=str(path),
                          hint="save it as UTF-8: KEY=value lines (see README: 'Connect a real R2 bucket')") from None
    return {key: value for key, value in values.items() if value is not None}


def apply(environ: os._Environ | dict | None = None, cwd: Path | None = None) -> None:
    """Set the R2 checksum variables and the AWS_* credential names, never overriding what is set."""
    environ = os.environ if environ is None else environ
    if environ.get(DISABLE_VARIABLE) == "off":
        return
    for key, value in CHECKSUM_SETTINGS.items():
        environ.setdefault(key, value)
    if sys.prefix != sys.base_prefix:
        # Stage commands in dvc.yaml say `python ...`: make that this virtualenv's python even when
        # `scripts/.venv/bin/dvc` is run without activating the virtualenv.
        bin_dir = str(Path(sys.executable).parent)
        path = environ.get("PATH", "")
        if bin_dir not in path.split(os.pathsep):
            environ["PATH"] = bin_dir + os.pathsep + path if path else bin_dir
    source = {name: environ[name] for name in CREDENTIAL_MAP if environ.get(name)}
    if len(source) < len(CREDENTIAL_MAP):
        dotenv = _project_dotenv(cwd or Path.cwd(), environ)
        if dotenv:
            for name, value in read_dotenv(dotenv).items():
                if name in CREDENTIAL_MAP and value and name not in source:
                    source[name] = value
    if len(source) == len(CREDENTIAL_MAP):
        for name, aws_name in CREDENTIAL_MAP.items():
            environ.setdefault(aws_name, source[name])


def install(site_packages: Path | None = None) -> Path:
    """Write the .pth file into this interpreter's site-packages; return its path."""
    target = (site_packages or Path(sysconfig.get_paths()["purelib"])) / PTH_NAME
    target.write_text(PTH_LINE)
    return target


if __name__ == "__main__":
    if sys.argv[1:] == ["install"]:
        print(f"installed {install()}")
    else:
        print("usage: python -m pose_factory.core.envhook install", file=sys.stderr)
        sys.exit(2)
