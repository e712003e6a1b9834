"""The default DVC remote, read and filled by pose-sync directly: the two kinds `pose-sync init` makes.

DVC 3 keeps objects in a remote as `files/md5/<2 hex>/<30 hex>` (a folder's listing as `<md5>.dir`), under
the remote's URL: `s3://<bucket>/<dvc prefix>` on R2 (endpoint in `.dvc/config`, credentials from the
environment, as for the bucket), or a local folder (`.dvc/config.local`). Knowing that layout, status can
ask whether a version was pushed with one request per batch, prune-bucket can list what the remote
holds, and fetch can hand rclone the list of objects a checkout needs. Any other remote (another kind, a
remote set in DVC's global config) is None here, and the callers fall back to DVC itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pose_factory.bucket.backends import LocalFolderStorage, S3Storage, Storage
from pose_factory.core.settings import R2Credentials, Settings, r2_credentials
from pose_factory.dataset import dvcrepo

OBJECTS = "files/md5/"


def repair_hint(delete: list[str]) -> str:
    """How to mend the DVC remote: delete these objects (damaged ones, and the .dir object of a version that lacks
    files), then push again. `dvc push` takes a remote that has a version's .dir object to have all of its files,
    and one that has an object to have it intact, and skips them."""
    push = "`dvc push` from a machine that has this version"
    if not delete:
        return push
    paths = " and ".join(f"{OBJECTS}{oid[:2]}/{oid[2:]}" for oid in dict.fromkeys(delete))
    return f"delete {paths} from the DVC remote, then {push} (it skips what the remote has)"


@dataclass
class DvcRemote:
    """The default DVC remote: its name, URL, and a Storage with the key prefix of its objects."""

    name: str
    url: str
    storage: Storage
    prefix: str  # key prefix of the objects in storage: "<dvc prefix>/files/md5/" or "files/md5/"
    credentials: R2Credentials | None = None  # an s3:// remote's (its endpoint from .dvc/config)

    def key(self, oid: str) -> str:
        """The key of an object (`<md5>` or `<md5>.dir`)."""
        return f"{self.prefix}{oid[:2]}/{oid[2:]}"

    def has(self, oid: str) -> bool:
        """Whether the remote holds the object (one request)."""
        return self.storage.exists(self.key(oid))

    def rclone_source(self, settings: Settings) -> tuple[str, dict[str, str]]:
        """rclone's name for the folder of objects, and the environment that defines its remote."""
        from pose_factory.bucket import rclone

        if self.credentials is None:
            assert isinstance(self.storage, LocalFolderStorage)
            return rclone.source_for(self.storage, settings, self.prefix)
        return rclone.remote_source(settings.rclone_remote, self.credentials, self.storage.bucket, self.prefix)


def default_remote(settings: Settings) -> DvcRemote | None:
    """The default DVC remote when it is an s3:// remote we have credentials for, or a local folder."""
    root = settings.root
    parsers = dvcrepo.read_config(root)

    def _value(section: str, key: str) -> str | None:
        return dvcrepo.config_value(root, section, key, parsers)

    name = _value("core", "remote")
    if not name:
        return None
    section = f"'remote \"{name}\"'"
    url = _value(section, "url")
    if not url:
        return None
    if url.startswith("s3://"):
        bucket, _, path = url[len("s3://"):].partition("/")
        credentials = r2_credentials(required=False)
        if credentials is None or not bucket:
            return None
        endpoint = _value(section, "endpointurl")
        if endpoint and endpoint.rstrip("/") != credentials.endpoint_url.rstrip("/"):
            from dataclasses import replace

            credentials = replace(credentials, endpoint_url=endpoint)
        storage = S3Storage(credentials, bucket, concurrency=settings.concurrency,
                            max_attempts=settings.max_attempts, connect_timeout_s=settings.connect_timeout_s,
                            read_timeout_s=settings.read_timeout_s)
        prefix = (path.strip("/") + "/" if path.strip("/") else "") + OBJECTS
        return DvcRemote(name, url, storage, prefix, credentials)
    if "://" in url:
        return None
    folder = Path(url).expanduser()
    if not folder.is_absolute():
        folder = (root / ".dvc" / folder).resolve()
    return DvcRemote(name, url, LocalFolderStorage(folder, ""), OBJECTS)
