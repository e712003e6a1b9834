"""`pose-sync materialize`: build the ComfyUI working set from the `working:` section of params.yaml.

One folder per modality (`pose/`, `openpose_json/`, `depth/`, `normal/`, `seg/`, `rgb/`) with one
zero-padded name per sample across all of them, so batch loaders that sort by name pair them by index,
plus `index.json` / `index.csv` listing every sample with its paths and metadata. Samples rejected with
`pose-sync curate` (data/curation/<batch>.tsv) are left out unless `working.curation` is `ignore`. The set
is built in a temporary folder beside the destination and swapped in atomically: ComfyUI never sees half a
set, and an interrupted build leaves the previous one as it was. Files come from the read-only raw mirror by
hardlink, symlink, copy or copy-on-write clone; the mirror is never writable through them.

`dvc.yaml` marks the working set `persist: true`, so `dvc repro` does not delete it before running this
stage: until the swap, ComfyUI keeps reading the previous set, and a failed or killed build leaves it in
place. What a killed build leaves beside the set (`.current_batch.build-*`, and `.pose-sync-tmp/` where the
filesystem has no atomic exchange: see fsutil.swap_dir) is put right by the next run, under a lock so that two
builds never share a folder.

`pose-sync prepare-batch` (`prepare_batch`) makes one batch the working set in params.yaml and runs `dvc repro`.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import fcntl
import io
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from pose_factory.core import contract, killpoint, schemas
from pose_factory.core.errors import ConfigError, PoseFactoryError, RepositoryError, ToolError
from pose_factory.core.fsutil import clone_file, make_read_only, recover_swap, swap_dir
from pose_factory.core.layout import CURATION, MANIFEST_NAME

if TYPE_CHECKING:
    from pose_factory.core.models import Annotation, IndexRow, Manifest, ManifestSample, WorkingIndex
    from pose_factory.core.settings import Settings

INDEX_VERSION = 1
DEFAULT_WORKING: dict[str, Any] = {
    "batches": "latest",
    "modalities": ["pose", "openpose_json", "depth", "normal", "seg", "rgb"],
    "filters": {"project": None, "azimuth_deg": None, "elevation_deg": None, "rig": None, "pose_set": None,
                "tags": [], "sample_ids": []},
    "naming": {"prefix": "", "digits": 6},
    "link_mode": "hardlink",
    "curation": "respect",
}


def working_settings(params: dict[str, Any], params_file: str) -> dict[str, Any]:
    """The `working:` section merged over its defaults, validated; an error names the key."""
    section = params.get("working") or {}
    if not isinstance(section, dict):
        raise ConfigError("key 'working': expected a mapping", where=params_file)
    found = schemas.problems(json.loads(json.dumps(section)), "working", params_file)
    if found:
        first = found[0]
        key = "working" + first.field.removeprefix("$")
        raise ConfigError(f"key '{key}': expected {first.expected}, found {first.found}", where=params_file,
                          hint="see the working: section in README (Pipeline)")
    merged = json.loads(json.dumps(DEFAULT_WORKING))
    for key, value in section.items():
        if isinstance(value, dict):
            merged[key].update(value)
        else:
            merged[key] = value
    return merged


@dataclass(frozen=True)
class Selected:
    batch_id: str
    sample: ManifestSample
    annotation: Annotation
    manifest_sha256: str


def _require_checked_out(batch_ids: list[str], raw_dir: Path) -> None:
    """Every batch the build reads has its folder in the mirror (a fresh clone has only the .dvc files)."""
    for batch_id in batch_ids:
        if not (raw_dir / batch_id / MANIFEST_NAME).is_file():
            tracked = (raw_dir / f"{batch_id}.dvc").is_file()
            raise RepositoryError(f"batch {batch_id} is registered in batches: but its folder is not checked out",
                                  where=str(raw_dir / batch_id),
                                  hint=f"`dvc pull {raw_dir / batch_id}.dvc` (or `dvc checkout` when the data is "
                                       "in the DVC cache)" if tracked
                                  else f"`pose-sync pull {batch_id}`, or remove it from batches: in params.yaml")


def _resolve_batches(working: dict[str, Any], registered: list[str], raw_dir: Path, params_file: str) -> list[str]:
    if not registered:
        raise RepositoryError("no batches are registered in params.yaml (batches:), so there is nothing to put "
                              "in the working set", where=params_file,
                              hint="pull one first: `pose-sync pull-latest` (or `pose-sync restore BATCH_ID`)")
    if working["batches"] == "latest":
        _require_checked_out(registered, raw_dir)

        def created(batch_id: str) -> tuple[str, str]:
            manifest = orjson.loads((raw_dir / batch_id / MANIFEST_NAME).read_bytes())
            return manifest["created_at"], batch_id

        return [max(registered, key=created)]
    unknown = [b for b in working["batches"] if b not in registered]
    if unknown:
        raise ConfigError(f"key 'working.batches': {unknown[0]!r} is not in batches:", where=params_file,
                          hint="pull it (`pose-sync pull`), or restore it if archived (`pose-sync restore`)")
    _require_checked_out(list(working["batches"]), raw_dir)
    return list(working["batches"])


def _keep(selected: Selected, filters: dict[str, Any], manifest: Manifest) -> bool:
    annotation = selected.annotation
    camera, pose = annotation["camera"], annotation["pose"]
    if filters["project"] and manifest["project"] != filters["project"]:
        return False
    for key, value in (("azimuth_deg", camera["azimuth_deg"] % 360), ("elevation_deg", camera["elevation_deg"])):
        bounds = filters[key]
        if bounds is not None and not (bounds[0] <= value <= bounds[1]):
            return False
    if filters["rig"] and pose["rig"] != filters["rig"]:
        return False
    if filters["pose_set"] and pose["set"] != filters["pose_set"]:
        return False
    if filters["tags"]:
        tags = set(annotation.get("tags") or []) | set(manifest["job"].get("tags") or [])
        if not set(filters["tags"]) <= tags:
            return False
    if filters["sample_ids"] and selected.sample["sample_id"] not in filters["sample_ids"]:
        return False
    return True


# --- linking ----------------------------------------------------------------------------------------

def _linker(mode: str, counts: dict[str, int]) -> Callable[[str, str], None]:
    def hardlink(source: str, dest: str) -> None:
        try:
            os.link(source, dest)
            counts["hardlink"] += 1
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                raise
            shutil.copyfile(source, dest)  # another filesystem: a copy is the only way
            counts["copy"] += 1

    def symlink(source: str, dest: str) -> None:
        # Relative, so the working set survives moving the repository.
        os.symlink(os.path.relpath(source, os.path.dirname(dest)), dest)
        counts["symlink"] += 1

    def copy(source: str, dest: str) -> None:
        shutil.copyfile(source, dest)
        counts["copy"] += 1

    def clone(source: str, dest: str) -> None:
        if clone_file(Path(source), Path(dest)):
            counts["clone"] += 1
        else:
            copy(source, dest)

    return {"hardlink": hardlink, "symlink": symlink, "copy": copy, "clone": clone}[mode]


def _build_prefix(dest: Path) -> str:
    return f".{dest.name}.build-"


def recover_leftovers(dest: Path) -> list[str]:
    """Put right what a killed build left beside `dest`; return the names removed or restored.

    A previous set a swap moved aside and did not replace goes back to `dest` (fsutil.recover_swap); build
    folders (after an atomic exchange: the previous set) are removed. Call it only while holding the build lock.
    """
    if not dest.parent.is_dir():
        return []
    done = []
    outcome = recover_swap(dest)
    if outcome:
        done.append(f"{outcome} {dest.name}")
    for leftover in [p for p in dest.parent.iterdir() if p.name.startswith(_build_prefix(dest))]:
        shutil.rmtree(leftover, ignore_errors=True)
        done.append(f"removed {leftover.name}")
    return done


@contextlib.contextmanager
def build_lock(dest: Path):
    """One build of `dest` at a time (`dvc repro` and `pose-sync materialize` run by hand may overlap).

    The lock is taken on the parent folder itself, so no lock file is left beside the working set; the
    kernel drops it when the process dies, however it dies.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(dest.parent, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RepositoryError("another materialize is building the working set", where=str(dest),
                                  hint="wait for it to finish, then run this again") from None
        yield
    finally:
        os.close(fd)


@dataclass(frozen=True)
class MaterializeResult:
    out_dir: Path
    samples: int
    batches: list[str]
    modalities: list[str]
    link_counts: dict[str, int]
    rejected: int = 0  # left out by curation decisions
    fresh_look: int = 0  # curation decisions not applied: the sample was re-rendered since


def materialize(params_file: Path, raw_dir: Path, reports_dir: Path, out_dir: Path, progress=None,
                curation_dir: Path = CURATION) -> MaterializeResult:
    """Build the working set the params ask for and swap it into out_dir; on any failure out_dir is unchanged."""
    with build_lock(out_dir):
        recover_leftovers(out_dir)
        killpoint.reached("materialize:start")
        return _materialize(params_file, raw_dir, reports_dir, out_dir, progress, curation_dir)


def _materialize(params_file: Path, raw_dir: Path, reports_dir: Path, out_dir: Path, progress, curation_dir: Path
                 ) -> MaterializeResult:
    from pose_factory.core.settings import load_yaml, yaml_text
    from pose_factory.dataset.curation import rejected_samples

    label = str(params_file)
    try:
        raw = params_file.read_bytes()
    except FileNotFoundError:
        raise ConfigError("the params file does not exist", where=label, hint="run from the project root") from None
    params = load_yaml(yaml_text(raw, label), label, hint="fix params.yaml (indentation and colons)") or {}
    if not isinstance(params, dict):
        raise ConfigError("expected a mapping at the top level", where=label)
    working = working_settings(params, label)
    registered = list(params.get("batches") or [])
    batch_ids = _resolve_batches(working, registered, raw_dir, label)
    for batch_id in batch_ids:
        metrics = reports_dir / batch_id / "metrics.json"
        if not metrics.is_file():
            raise RepositoryError(f"{batch_id} has not been validated", where=str(metrics),
                                  hint="run `dvc repro`: it validates every batch before materialising")
        if json.loads(metrics.read_text()).get("errors", 1) != 0:
            raise RepositoryError(f"{batch_id} failed validation: it is not put in the working set", where=str(metrics),
                                  hint=f"see {reports_dir / batch_id / 'report.json'}")
    modalities = working["modalities"]
    selected: list[tuple[Selected, Manifest]] = []
    left_out, fresh_look = 0, 0
    for batch_id in batch_ids:
        batch_dir = raw_dir / batch_id
        manifest_bytes = (batch_dir / MANIFEST_NAME).read_bytes()
        manifest: Manifest = orjson.loads(manifest_bytes)  # the validate stage checked it (metrics.json above)
        manifest_sha256 = contract.sha256_bytes(manifest_bytes)
        missing = [m for m in modalities if m not in manifest["modalities"]]
        if missing:
            raise ConfigError(f"key 'working.modalities': batch {batch_id} has no {', '.join(missing)}",
                              where=label, hint="choose from: " + ", ".join(manifest["modalities"]))
        rejected: set[str] = set()
        if working["curation"] == "respect":
            rejected, stale = rejected_samples(curation_dir, batch_id, manifest)
            fresh_look += stale
        for sample in manifest["samples"]:
            annotation: Annotation = orjson.loads((batch_dir / sample["annotation"]).read_bytes())
            item = Selected(batch_id, sample, annotation, manifest_sha256)
            if _keep(item, working["filters"], manifest):
                if sample["sample_id"] in rejected:
                    left_out += 1
                    continue
                selected.append((item, manifest))
    if not selected and left_out:
        raise ConfigError(f"every sample the filters in working: select is rejected in {curation_dir}", where=label,
                          hint="keep some (`pose-sync curate`), widen working.filters, or set working.curation: "
                               "ignore")
    if not selected:
        raise ConfigError("the filters in working: select no sample", where=label,
                          hint="widen working.filters, or choose other working.batches")

    build = Path(tempfile.mkdtemp(prefix=_build_prefix(out_dir), dir=out_dir.parent))
    counts = {"hardlink": 0, "symlink": 0, "copy": 0, "clone": 0}
    link = _linker(working["link_mode"], counts)
    naming = working["naming"]
    try:
        for modality in modalities:
            (build / contract.MODALITIES[modality][0]).mkdir()
        rows: list[IndexRow] = []
        counter = progress.task("materialize", len(selected), "samples") if progress else contextlib.nullcontext()
        with counter as bar:
            # Plain strings and os calls: with thousands of files, pathlib's overhead would dominate.
            raw_base, build_base = str(raw_dir), str(build)
            protect = working["link_mode"] in ("hardlink", "symlink")
            for index, (item, _manifest) in enumerate(selected):
                name = f"{naming['prefix']}{index:0{naming['digits']}d}"
                files, sources = {}, {}
                for modality in modalities:
                    folder, extension, _ = contract.MODALITIES[modality]
                    source = os.path.join(raw_base, item.batch_id, item.sample["files"][modality])
                    if protect:
                        make_read_only(source)  # so a link cannot be used to change the mirror
                    rel = f"{folder}/{name}{extension}"
                    link(source, os.path.join(build_base, rel))
                    files[modality] = rel
                    sources[modality] = f"{item.batch_id}/{item.sample['files'][modality]}"
                rows.append(_index_row(index, name, item, files, sources))
                killpoint.reached("materialize:linking")
                if bar:
                    bar.advance()
        index_doc: WorkingIndex = {
            "version": INDEX_VERSION,
            "batches": [{"batch_id": b, "manifest_sha256": next(i.manifest_sha256 for i, _ in selected
                                                                 if i.batch_id == b)} for b in batch_ids],
            "modalities": modalities,
            "link_mode": working["link_mode"],
            "working": working,
            "samples": rows,
        }
        (build / "index.json").write_bytes(
            orjson.dumps(index_doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n")
        (build / "index.csv").write_text(_index_csv(rows, modalities))
        killpoint.reached("materialize:built")
        swap_dir(build, out_dir, step="materialize")  # atomic exchange: ComfyUI always sees a whole set
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise
    return MaterializeResult(out_dir, len(rows), batch_ids, modalities, {k: v for k, v in counts.items() if v},
                             left_out, fresh_look)


def _index_row(index: int, name: str, item: Selected, files: dict[str, str], sources: dict[str, str]) -> IndexRow:
    annotation = item.annotation
    camera, pose = annotation["camera"], annotation["pose"]
    person = annotation["persons"][0] if annotation["persons"] else None
    return {
        "index": index, "name": name, "batch_id": item.batch_id, "sample_id": item.sample["sample_id"],
        "files": files, "source": sources,
        "azimuth_deg": camera["azimuth_deg"], "elevation_deg": camera["elevation_deg"],
        "distance_m": camera["distance_m"], "focal_length_mm": camera["focal_length_mm"],
        "rig": pose["rig"], "pose_set": pose["set"], "frame": pose["frame"],
        "visible_fraction": person["visible_fraction"] if person else None, "bbox": person["bbox"] if person else None,
    }


def _index_csv(rows: list[IndexRow], modalities: list[str]) -> str:
    buffer = io.StringIO()
    columns = ["index", "name", "batch_id", "sample_id", *modalities, "azimuth_deg", "elevation_deg", "distance_m",
               "rig", "pose_set", "frame", "visible_fraction"]
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        cells: Mapping[str, Any] = row
        flat = {k: cells[k] for k in columns if k in cells}
        flat.update(row["files"])
        writer.writerow(flat)
    return buffer.getvalue()


def describe(out_dir: Path) -> dict[str, Any]:
    """What the current working set holds (from its index.json)."""
    index_file = out_dir / "index.json"
    if not index_file.is_file():
        raise PoseFactoryError("there is no working set yet", where=str(out_dir),
                               hint="run `dvc repro` or `pose-sync prepare-batch BATCH_ID`")
    index = json.loads(index_file.read_text())
    return {"path": str(out_dir), "samples": len(index["samples"]), "modalities": index["modalities"],
            "batches": [b["batch_id"] for b in index["batches"]], "link_mode": index["link_mode"]}


def prepare_batch(settings: Settings, batch_id: str) -> dict[str, Any]:
    """`pose-sync prepare-batch`: select one registered batch as the working set in params.yaml and run `dvc repro`."""
    # Imported here, not at the top: the materialize stage never runs this, and dvc.yaml's deps list only what
    # the stage loads (tests/test_stage_deps.py).
    import logging
    import subprocess

    from pose_factory.core.console import log_command
    from pose_factory.dataset import dvcrepo, journal, params

    dvcrepo.require_repository(settings.root)
    # A pull registers batches in the same params.yaml: under its lock, neither edit can overwrite the other.
    with journal.locked(settings, "prepare-batch"):
        document = params.read_params(settings)
        if batch_id not in (document.get("batches") or []):
            archived = batch_id in (document.get("archived") or [])
            raise RepositoryError(f"{batch_id} is not in the pipeline's batches", where=str(settings.params_file),
                                  hint=f"`pose-sync restore {batch_id}` first" if archived
                                  else f"`pose-sync pull {batch_id}` first")
        working = document.get("working")
        if working is None:
            document["working"] = working = {}
        working["batches"] = [batch_id]
        params.write_params(settings, document)
    command = [sys.executable, "-m", "dvc", "repro"]
    log_command(logging.getLogger(__name__), command)
    done = subprocess.run(command, cwd=settings.root, text=True, env={**os.environ, "DVC_NO_ANALYTICS": "1"})
    if done.returncode != 0:
        # The working set is a persisted output built beside the old one, so a failed repro leaves the old one.
        try:
            kept = f"the previous working set ({', '.join(describe(settings.layout.working_set)['batches'])}) is " \
                   "still in place for ComfyUI"
        except PoseFactoryError:
            kept = "there is no working set yet"
        raise ToolError("dvc repro failed (its output is above)", where=str(settings.root),
                        hint=f"{kept}; params.yaml now asks for {batch_id}: fix what is listed above (a batch that "
                             "fails validation is listed with its problems), then run `dvc repro`")
    return describe(settings.layout.working_set)
