"""Job definitions in the bucket: `push-job` validates and uploads one, `list-jobs` lists them."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pose_factory.bucket.backends import Storage, join_key
from pose_factory.core import contract, schemas
from pose_factory.core.errors import SchemaError
from pose_factory.core.settings import Settings

if TYPE_CHECKING:
    from pose_factory.core.models import Job

JOBS_JSON_VERSION = 1
# A job definition is a few hundred bytes; anything far larger in the jobs prefix is not read.
MAX_JOB_BYTES = 1024 * 1024


def job_key(settings: Settings, job_id: str) -> str:
    return join_key(settings.prefixes.jobs, f"{job_id}.json")


def read_job(storage: Storage, settings: Settings, job_id: str) -> Job:
    """The job definition `job_id` from the bucket: size-capped, parsed bounded, checked against its schema."""
    key = job_key(settings, job_id)
    job: Job = schemas.parse_json(storage.read_bytes(key, MAX_JOB_BYTES), key)
    schemas.check(job, "job", key)
    return job


def push_job(storage: Storage, settings: Settings, job_file: Path) -> tuple[str, str]:
    """Validate a job definition against schemas/job.schema.json and upload it; return (job id, key)."""
    job = schemas.load_json(job_file)
    schemas.check(job, "job", str(job_file))
    storage.ensure_bucket()
    key = job_key(settings, job["job_id"])
    storage.put_bytes(key, contract.dumps(job))
    return job["job_id"], key


@dataclass(frozen=True)
class JobListing:
    job_id: str
    project: str | None
    generator: str | None
    samples: int | None
    key: str
    problem: str | None = None


def list_jobs(storage: Storage, settings: Settings) -> list[JobListing]:
    """The job definitions under the jobs prefix (a broken one is listed with its problem)."""
    found = []
    for info in storage.list_objects(settings.prefixes.jobs):
        # Job definitions sit right under the prefix; `<job_id>/...` holds the pods' status and results.
        if not info.key.endswith(".json") or "/" in info.key[len(settings.prefixes.jobs):]:
            continue
        job_id = info.key.rsplit("/", 1)[-1].removesuffix(".json")
        try:
            job = schemas.parse_json(storage.read_bytes(info.key, MAX_JOB_BYTES), info.key)
            problems = schemas.problems(job, "job", info.key)
        except SchemaError as exc:
            found.append(JobListing(job_id, None, None, None, info.key, exc.message))
            continue
        if not isinstance(job, dict):
            found.append(JobListing(job_id, None, None, None, info.key, str(problems[0])))
            continue
        found.append(JobListing(job.get("job_id", job_id), job.get("project"), job.get("generator"),
                                job.get("samples"), info.key, str(problems[0]) if problems else None))
    return found


def jobs_json(jobs: list[JobListing]) -> dict[str, Any]:
    return {"version": JOBS_JSON_VERSION, "jobs": [asdict(j) for j in jobs]}
