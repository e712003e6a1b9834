"""Configuration and credentials: defaults, the example file, clear errors, secrets kept out of output."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from helpers import REPO, TEST_SECRET_KEY
from pose_factory.core.errors import ConfigError, CredentialsError
from pose_factory.core.settings import DEFAULTS, load_settings, r2_credentials, resolve_backend


def write_config(project, text: str) -> Path:
    path = project.root / "config" / "local.yaml"
    path.write_text(text)
    return path


def test_example_config_documents_exactly_the_defaults():
    example = yaml.safe_load((REPO / "config" / "local.example.yaml").read_text())
    assert example == DEFAULTS
    # Every key in the example has a comment right above it saying what it is for.
    lines = (REPO / "config" / "local.example.yaml").read_text().splitlines()
    for number, line in enumerate(lines):
        if re.match(r"^\s*[a-z_]+:", line):
            above = [earlier for earlier in lines[:number] if earlier.strip()][-1]
            assert above.strip().startswith("#"), f"no comment above: {line}"


def test_defaults_without_a_config_file(project):
    settings = load_settings()
    assert settings.config_file is None
    assert settings.bucket == "pose-factory"
    assert settings.prefixes.batches == "batches/"
    assert settings.rclone_remote == "r2_pose_factory"
    assert settings.mirror_dir == project.root / "data" / "raw" / "pose-factory"
    assert settings.local_bucket_dir == project.root / "data" / "local-bucket"


def test_config_file_overrides_defaults_and_env_overrides_bucket(project, monkeypatch):
    write_config(project, "bucket: my-poses\nprefixes:\n  batches: renders/\nstorage:\n  concurrency: 3\n")
    settings = load_settings()
    assert (settings.bucket, settings.prefixes.batches, settings.prefixes.dvc) == ("my-poses", "renders/", "dvc/")
    assert settings.concurrency == 3
    monkeypatch.setenv("POSE_FACTORY_R2_BUCKET", "from-env")
    assert load_settings().bucket == "from-env"


def test_unknown_key_suggests_the_right_one(project, cli):
    path = write_config(project, "buckt: x\n")
    result = cli("config")
    assert result.code == 2
    assert f"({path})" in result.err
    assert "'buckt'" in result.err and "'bucket'" in result.err  # the wrong key and the right one
    assert "Traceback" not in result.err


def test_nested_unknown_key_and_wrong_type_name_the_key(project):
    write_config(project, "storage:\n  concurency: 4\n")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "storage.concurency" in caught.value.message and "concurrency" in caught.value.message

    write_config(project, "storage:\n  concurrency: eight\n")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "'storage.concurrency'" in caught.value.message and "'eight'" in caught.value.message


def test_malformed_yaml_names_line_and_column(project, cli):
    path = write_config(project, "bucket: ok\nprefixes:\n  batches: [unclosed\n")
    result = cli("list")
    assert result.code == 2
    assert str(path) in result.err and "line 4, column 1" in result.err
    assert "hint:" in result.err


def test_top_level_must_be_a_mapping(project):
    write_config(project, "- just\n- a list\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_settings()


def test_config_named_by_environment_must_exist(project, monkeypatch, tmp_path):
    monkeypatch.setenv("POSE_FACTORY_CONFIG", str(tmp_path / "nope.yaml"))
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "POSE_FACTORY_CONFIG" in caught.value.message and "nope.yaml" in str(caught.value)


def test_dotenv_is_loaded_and_the_environment_wins(project, monkeypatch):
    (project.root / ".env").write_text(
        "CLOUDFLARE_R2_ACCESS_KEY_ID=from-dotenv\nCLOUDFLARE_R2_SECRET_ACCESS_KEY=dotenv-secret-value\n"
        "CLOUDFLARE_R2_ACCOUNT_ID=abc123\nPOSE_FACTORY_R2_BUCKET=dotenv-bucket\n")
    monkeypatch.setenv("POSE_FACTORY_R2_BUCKET", "env-bucket")
    settings = load_settings()
    assert settings.bucket == "env-bucket"
    credentials = r2_credentials(required=True)
    assert credentials.access_key_id == "from-dotenv"
    assert credentials.endpoint_url == "https://abc123.r2.cloudflarestorage.com"
    assert "dotenv-secret-value" not in repr(credentials)
    assert resolve_backend(settings)[0] == "r2"


def test_endpoint_override_replaces_the_account_id(project, monkeypatch):
    monkeypatch.setenv("CLOUDFLARE_R2_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("CLOUDFLARE_R2_SECRET_ACCESS_KEY", "s")
    monkeypatch.setenv("POSE_FACTORY_R2_ENDPOINT", "http://127.0.0.1:9")
    assert r2_credentials(required=True).endpoint_url == "http://127.0.0.1:9"


def test_no_credentials_means_the_embedded_local_bucket(project):
    assert resolve_backend(load_settings()) == ("local", None)


def test_r2_requested_without_credentials_names_what_is_missing(project, cli):
    result = cli("list", "--backend", "r2")
    assert result.code == 3
    for name in ("CLOUDFLARE_R2_ACCESS_KEY_ID", "CLOUDFLARE_R2_SECRET_ACCESS_KEY", "CLOUDFLARE_R2_ACCOUNT_ID"):
        assert name in result.err
    assert "hint:" in result.err and "Traceback" not in result.err
    assert project.files_outside_data() == []


def test_partial_credentials_are_an_error_not_a_silent_fallback(project, monkeypatch):
    monkeypatch.setenv("CLOUDFLARE_R2_ACCESS_KEY_ID", "only-the-key")
    with pytest.raises(CredentialsError) as caught:
        resolve_backend(load_settings())
    assert "CLOUDFLARE_R2_SECRET_ACCESS_KEY" in caught.value.message
    assert "only-the-key" not in str(caught.value)


def test_config_output_never_shows_secrets(project, cli, monkeypatch):
    monkeypatch.setenv("CLOUDFLARE_R2_ACCESS_KEY_ID", "TESTKEYID-EXAMPLE-0001")
    monkeypatch.setenv("CLOUDFLARE_R2_SECRET_ACCESS_KEY", TEST_SECRET_KEY)
    monkeypatch.setenv("CLOUDFLARE_R2_ACCOUNT_ID", "0123abcd")
    result = cli("config", "--json")
    assert result.code == 0
    document = json.loads(result.out)
    assert document["version"] == 1 and document["backend"] == "r2"
    assert document["environment"]["CLOUDFLARE_R2_SECRET_ACCESS_KEY"] == "set"
    assert TEST_SECRET_KEY not in result.out + result.err
    assert "TESTKEYID-EXAMPLE-0001" not in result.out + result.err
