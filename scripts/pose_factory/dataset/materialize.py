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
from collections.abc import Mapping
from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import orjson

from pose_factory.core import contract, killpoint, schemas
from pose_factory.core.errors import ConfigError, PoseFactoryError, RepositoryError, SchemaError, ToolError
from pose_factory.core.forked import ForkedHelper, can_fork
from pose_factory.core.fsutil import clone_file, make_read_only_at, recover_swap, remove_tree, swap_dir
from pose_factory.core.layout import CURATION, MANIFEST_NAME

if TYPE_CHECKING:
    from pose_factory.core.models import Annotation, IndexFields, IndexRow, Manifest, ManifestSample, WorkingIndex
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


def _manifest(raw_dir: Path, batch_id: str, cache: dict[str, tuple[bytes, Manifest]]) -> tuple[bytes, Manifest]:
    """A batch's manifest (bytes, parsed), read and parsed once per run: at 70,000 files it is 13 MB. The validate
    stage checked it (metrics.json, see _materialize)."""
    if batch_id not in cache:
        data = (raw_dir / batch_id / MANIFEST_NAME).read_bytes()
        cache[batch_id] = (data, orjson.loads(data))
    return cache[batch_id]


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


def _resolve_batches(working: dict[str, Any], registered: list[str], raw_dir: Path, params_file: str,
                     manifests: dict[str, tuple[bytes, Manifest]]) -> list[str]:
    if not registered:
        raise RepositoryError("no batches are registered in params.yaml (batches:), so there is nothing to put "
                              "in the working set", where=params_file,
                              hint="pull one first: `pose-sync pull-latest` (or `pose-sync restore BATCH_ID`)")
    if working["batches"] == "latest":
        _require_checked_out(registered, raw_dir)

        def created(batch_id: str) -> tuple[str, str]:
            # From the manifest's first 64 KiB when created_at is there (before files and samples, in pose-sync's
            # sorted keys): ten registered 70,000-file batches are 130 MB of manifests to parse otherwise.
            with open(raw_dir / batch_id / MANIFEST_NAME, "rb") as handle:
                found = contract.head_string(handle.read(contract.HEAD_BYTES), "created_at")
            return found if found is not None else _manifest(raw_dir, batch_id, manifests)[1]["created_at"], batch_id

        latest = max(registered, key=created)
        for batch_id in registered:  # only the chosen manifest is needed from here on
            if batch_id != latest:
                manifests.pop(batch_id, None)
        return [latest]
    unknown = [b for b in working["batches"] if b not in registered]
    if unknown:
        raise ConfigError(f"key 'working.batches': {unknown[0]!r} is not in batches:", where=params_file,
                          hint="pull it (`pose-sync pull`), or restore it if archived (`pose-sync restore`)")
    _require_checked_out(list(working["batches"]), raw_dir)
    return list(working["batches"])


# Filters that need the sample's annotation; the others are answered by the manifest alone.
ANNOTATION_FILTERS = ("azimuth_deg", "elevation_deg", "rig", "pose_set", "tags")


def _annotation_keeps(annotation: Annotation, filters: dict[str, Any], job_tags: set[str]) -> bool:
    camera, pose = annotation["camera"], annotation["pose"]
    for key, value in (("azimuth_deg", camera["azimuth_deg"] % 360), ("elevation_deg", camera["elevation_deg"])):
        bounds = filters[key]
        if bounds is not None and not (bounds[0] <= value <= bounds[1]):
            return False
    if filters["rig"] and pose["rig"] != filters["rig"]:
        return False
    if filters["pose_set"] and pose["set"] != filters["pose_set"]:
        return False
    if filters["tags"]:
        tags = set(annotation.get("tags") or []) | job_tags
        if not set(filters["tags"]) <= tags:
            return False
    return True


def _index_fields(annotation: Annotation) -> IndexFields:
    """What index.json keeps of an annotation (the annotation itself is dropped: 10,000 of them held in
    memory make the garbage collector walk them over and over)."""
    camera, pose = annotation["camera"], annotation["pose"]
    person = annotation["persons"][0] if annotation["persons"] else None
    return {
        "azimuth_deg": camera["azimuth_deg"], "elevation_deg": camera["elevation_deg"],
        "distance_m": camera["distance_m"], "focal_length_mm": camera["focal_length_mm"],
        "rig": pose["rig"], "pose_set": pose["set"], "frame": pose["frame"],
        "visible_fraction": person["visible_fraction"] if person else None, "bbox": person["bbox"] if person else None,
    }


def _rejected(curation_dir: Path, batch_id: str, manifest: Manifest) -> tuple[set[str], int]:
    from pose_factory.dataset.curation import decisions_file, rejected_samples

    if not decisions_file(curation_dir, batch_id).is_file():
        return set(), 0  # never curated: no need to fingerprint every sample
    return rejected_samples(curation_dir, batch_id, manifest)


class Selected(NamedTuple):
    """One sample going into the working set, with the annotation fields index.json lists (None: not read yet)."""

    batch_id: str
    sample: ManifestSample
    fields: IndexFields | None


def _select(batch_id: str, batch_dir: str, manifest: Manifest, filters: dict[str, Any],
            rejected: set[str]) -> tuple[list[Selected], int]:
    """The samples of one batch the filters keep, in manifest order, and how many curation left out.

    Each annotation is read once, with plain os calls, and only for samples the manifest alone does not rule
    out. When no filter needs the annotations, they are not read here (`fields` is None): their fields are
    read while the files are linked (_index_fields_for).
    """
    if filters["project"] and manifest["project"] != filters["project"]:
        return [], 0
    wanted = set(filters["sample_ids"]) if filters["sample_ids"] else None
    by_annotation = any(filters[key] for key in ANNOTATION_FILTERS)
    job_tags = set(manifest["job"].get("tags") or [])
    loads, read = orjson.loads, contract.read_file
    selected, left_out = [], 0
    for sample in manifest["samples"]:
        if wanted is not None and sample["sample_id"] not in wanted:
            continue
        fields = None
        if by_annotation:
            annotation = loads(read(batch_dir + sample["annotation"]))
            if not _annotation_keeps(annotation, filters, job_tags):
                continue
            fields = _index_fields(annotation)
        if sample["sample_id"] in rejected:
            left_out += 1
            continue
        selected.append(Selected(batch_id, sample, fields))
    return selected, left_out


# From this many files to put in place, a second process takes part of the work where it can be forked (Linux):
# it links some of the modality folders and reads the annotations index.json needs while this process links the
# rest (two cores at work instead of one). Forked, it starts in about a millisecond with this process's memory.
# Chosen by the time a user waits, on a quiet 2-core machine (median of 5-6 alternated builds into an empty
# folder): 1,716 files 0.10 s either way; 6,000 files 0.17 -> 0.14 s; 17,142 files 0.32 -> 0.23 s. The helper
# costs about 0.03 CPU seconds more in all, which is why an earlier choice, by CPU time, was 20,000.
FORK_MIN_FILES = 4_000
# Where it cannot be forked (macOS), a fresh interpreter reads the annotations only, and only from this many on:
# below it, starting that interpreter costs more than it saves.
FIELDS_PROCESS_MIN_SAMPLES = 3_000


@contextlib.contextmanager
def _index_fields_for(selected: list[Selected], raw_base: str, scratch: str):
    """Yield a function that returns index.json's annotation fields of the selected samples not read yet, in order.

    They are read by a fresh interpreter that starts now and works while the caller links files (where no helper
    can be forked, from FIELDS_PROCESS_MIN_SAMPLES of them on), or here, when there are few of them or that
    process fails. The helper reads its list from a file in `scratch` (the build folder; gone when the context
    ends) and answers on its standard output: it writes nothing, and if this process dies it ends on its own
    once it has read them.
    """
    todo = [os.path.join(raw_base, item.batch_id, item.sample["annotation"]) for item in selected
            if item.fields is None]
    listing = Path(scratch) / ".annotations.txt"
    helper = None
    if len(todo) >= FIELDS_PROCESS_MIN_SAMPLES:
        import subprocess

        listing.write_bytes(b"\n".join(os.fsencode(path) for path in todo))
        package_root = str(Path(__file__).resolve().parents[2])
        code = ("import sys; sys.path.insert(0, sys.argv[1]); "
                "from pose_factory.dataset.materialize import write_index_fields; write_index_fields(sys.argv[2])")
        helper = subprocess.Popen([sys.executable, "-c", code, package_root, str(listing)], stdin=subprocess.DEVNULL,
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)

    def fields() -> list[IndexFields]:
        read: list[IndexFields] | None = None
        if helper is not None:
            answer, _ = helper.communicate()
            if helper.returncode == 0:
                with contextlib.suppress(orjson.JSONDecodeError):
                    read = orjson.loads(answer)
        if not isinstance(read, list) or len(read) != len(todo):
            read = _read_index_fields(todo)
        return read

    try:
        yield fields
    finally:
        if helper is not None:
            if helper.poll() is None:
                helper.kill()
            helper.wait()
            if helper.stdout:
                helper.stdout.close()
        listing.unlink(missing_ok=True)


def _read_index_fields(paths: list[str]) -> list[IndexFields]:
    """The index fields of each annotation listed, read here."""
    loads, read = orjson.loads, contract.read_file
    return [_index_fields(loads(read(path))) for path in paths]


def write_index_fields(paths_file: str) -> None:
    """(In the helper process of _index_fields_for.) Print the index fields of each annotation listed, as JSON."""
    paths = [os.fsdecode(path) for path in Path(paths_file).read_bytes().split(b"\n")]
    with contract.gc_paused():
        fields = _read_index_fields(paths)
    sys.stdout.buffer.write(orjson.dumps(fields))
    sys.stdout.buffer.flush()


# --- linking ----------------------------------------------------------------------------------------

def _open_dir(path: str) -> int:
    return os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))


def link_folder(mode: str, pairs: list[tuple[str, str, str]], dest_folder: str, counts: dict[str, int]) -> None:
    """Put each (source folder, source name, dest name) into dest_folder by `mode`.

    Hardlinks and symlinks are made in a tight loop of calls relative to open folders (no path building), each
    source checked read-only first with one stat, as `cp -al` stats each file: at 60,000 files the kernel's own
    work is most of the time.
    """
    if mode in ("hardlink", "symlink"):
        _link_folder(mode == "hardlink", pairs, dest_folder, counts)
        return
    for folder, name, dest in pairs:
        source, target = os.path.join(folder, name), os.path.join(dest_folder, dest)
        if mode == "clone" and clone_file(Path(source), Path(target)):
            counts["clone"] += 1
        else:
            shutil.copyfile(source, target)
            counts["copy"] += 1


def _link_folder(hard: bool, pairs: list[tuple[str, str, str]], dest_folder: str, counts: dict[str, int]) -> None:
    folder_fds: dict[str, int] = {}
    relative: dict[str, str] = {}  # symlinks are relative, so the working set survives moving the repository
    dest_fd = _open_dir(dest_folder)
    read_only, link, symlink = make_read_only_at, os.link, os.symlink
    linked = 0
    try:
        for folder, name, dest in pairs:
            fd = folder_fds.get(folder)
            if fd is None:
                fd = folder_fds[folder] = _open_dir(folder)
                relative[folder] = os.path.relpath(folder, dest_folder)
            # Raw files are read-only, so the working set cannot be used to change them. Every file is looked at:
            # a pull leaves the whole mirror read-only, but a `dvc checkout` in copy mode rewrites the files that
            # changed writable, so one folder can hold both.
            read_only(name, fd)
            if not hard:
                symlink(f"{relative[folder]}/{name}", dest, dir_fd=dest_fd)
                linked += 1
                continue
            try:
                link(name, dest, src_dir_fd=fd, dst_dir_fd=dest_fd)
                linked += 1
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                    raise
                # another filesystem (or a link limit): a copy is the only way
                shutil.copyfile(os.path.join(folder, name), os.path.join(dest_folder, dest))
                counts["copy"] += 1
    finally:
        counts["hardlink" if hard else "symlink"] += linked
        for fd in (dest_fd, *folder_fds.values()):
            os.close(fd)


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
    manifests: dict[str, tuple[bytes, Manifest]] = {}
    batch_ids = _resolve_batches(working, registered, raw_dir, label, manifests)
    for batch_id in batch_ids:
        metrics = reports_dir / batch_id / "metrics.json"
        if not metrics.is_file():
            raise RepositoryError(f"{batch_id} has not been validated", where=str(metrics),
                                  hint="run `dvc repro`: it validates every batch before materialising")
        again = "run `dvc repro`: it validates the batch again (DVC sees that its report changed)"
        try:
            errors = schemas.load_json(metrics).get("errors")
        except (SchemaError, AttributeError):
            errors = None
        if not isinstance(errors, int) or isinstance(errors, bool):
            raise RepositoryError(f"{batch_id}'s validation report has no error count", where=str(metrics),
                                  hint=again)
        if errors != 0:
            raise RepositoryError(f"{batch_id} failed validation: it is not put in the working set", where=str(metrics),
                                  hint=f"see {reports_dir / batch_id / 'report.json'}")
    modalities = working["modalities"]
    selected: list[Selected] = []
    manifest_sha256: dict[str, str] = {}
    left_out, fresh_look = 0, 0
    with contract.gc_paused():
        for batch_id in batch_ids:
            manifest_bytes, manifest = _manifest(raw_dir, batch_id, manifests)
            manifest_sha256[batch_id] = contract.sha256_bytes(manifest_bytes)
            missing = [m for m in modalities if m not in manifest["modalities"]]
            if missing:
                raise ConfigError(f"key 'working.modalities': batch {batch_id} has no {', '.join(missing)}",
                                  where=label, hint="choose from: " + ", ".join(manifest["modalities"]))
            rejected: set[str] = set()
            if working["curation"] == "respect":
                rejected, stale = _rejected(curation_dir, batch_id, manifest)
                fresh_look += stale
            chosen, curated_out = _select(batch_id, os.path.join(str(raw_dir), batch_id, ""), manifest,
                                          working["filters"], rejected)
            selected += chosen
            left_out += curated_out
            manifests.pop(batch_id)  # the samples keep what they need
    if not selected and left_out:
        raise ConfigError(f"every sample the filters in working: select is rejected in {curation_dir}", where=label,
                          hint="keep some (`pose-sync curate`), widen working.filters, or set working.curation: "
                               "ignore")
    if not selected:
        raise ConfigError("the filters in working: select no sample", where=label,
                          hint="widen working.filters, or choose other working.batches")

    build = Path(tempfile.mkdtemp(prefix=_build_prefix(out_dir), dir=out_dir.parent))
    counts = {"hardlink": 0, "symlink": 0, "copy": 0, "clone": 0}
    naming = working["naming"]
    names = [f"{naming['prefix']}{index:0{naming['digits']}d}" for index in range(len(selected))]
    index_head: dict[str, Any] = {  # index.json without its samples
        "version": INDEX_VERSION,
        "batches": [{"batch_id": b, "manifest_sha256": manifest_sha256[b]} for b in batch_ids],
        "modalities": modalities,
        "link_mode": working["link_mode"],
        "working": working,
    }
    try:
        with contract.gc_paused():
            _build_set(selected, names, index_head, str(raw_dir), str(build), counts, progress)
        killpoint.reached("materialize:built")
        # atomic exchange: ComfyUI always sees a whole set; a big previous set is removed by two processes
        swap_dir(build, out_dir, step="materialize",
                 remove=_remove_set if len(selected) * len(modalities) >= FORK_MIN_FILES else remove_tree)
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise
    return MaterializeResult(out_dir, len(selected), batch_ids, modalities, {k: v for k, v in counts.items() if v},
                             left_out, fresh_look)


# What reading one annotation (for index.json), and writing index.json and index.csv per sample, cost in files
# linked (measured at 10,000 samples: about 0.25 s for both, 0.08 s per 10,000 links).
READ_COST_IN_LINKS = 1.8
INDEX_COST_IN_LINKS = 1.2


def _build_set(selected: list[Selected], names: list[str], index_head: dict[str, Any], raw_base: str,
               build_base: str, counts: dict[str, int], progress) -> None:
    """Put every selected file into the build folder, one modality folder at a time, and write index.json and
    index.csv there.

    From FORK_MIN_FILES files on (Linux), a forked helper reads the annotations still to read, writes the index
    and links the last files (the last folders, and part of one), while this process links the others; the split
    gives each about the same work.
    """
    mode, modalities = index_head["link_mode"], index_head["modalities"]
    folders = [(modality, *contract.MODALITIES[modality][:2]) for modality in modalities]
    for _modality, folder, _extension in folders:
        os.mkdir(os.path.join(build_base, folder))
    todo = [os.path.join(raw_base, item.batch_id, item.sample["annotation"]) for item in selected
            if item.fields is None]
    samples = len(selected)
    # (modality, folder, first, last): the samples [first, last) of one folder
    mine = [(modality, folder, 0, samples) for modality, folder, _extension in folders]
    theirs: list[tuple[str, str, int, int]] = []
    helper = None
    if samples * len(folders) >= FORK_MIN_FILES and can_fork():
        extra = READ_COST_IN_LINKS * len(todo) + INDEX_COST_IN_LINKS * samples
        share = max(0, round((samples * len(folders) - extra) / 2))
        while share and mine:  # the helper's links are taken from the end
            modality, folder, first, last = mine.pop()
            taken = min(share, last - first)
            theirs.insert(0, (modality, folder, last - taken, last))
            if taken < last - first:
                mine.append((modality, folder, first, last - taken))
            share -= taken

        def helper_work() -> dict[str, int]:
            helper_counts = dict.fromkeys(counts, 0)
            for modality, folder, first, last in theirs:
                link_folder(mode, _pairs(selected[first:last], names[first:last], modality, raw_base),
                            os.path.join(build_base, folder), helper_counts)
            _write_index(build_base, index_head, selected, names, folders, _read_index_fields(todo))
            return helper_counts

        helper = ForkedHelper(helper_work, "materialize")
    counter = progress.task("materialize", samples * len(folders), "files") if progress \
        else contextlib.nullcontext()
    try:
        with _index_fields_for(selected if helper is None else [], raw_base, build_base) as read_fields, \
                counter as bar:
            for modality, folder, first, last in mine:
                link_folder(mode, _pairs(selected[first:last], names[first:last], modality, raw_base),
                            os.path.join(build_base, folder), counts)
                killpoint.reached("materialize:linking")
                if bar:
                    bar.advance(last - first)
            if helper is None:
                _write_index(build_base, index_head, selected, names, folders, read_fields())
            else:
                for key, value in helper.result().items():
                    counts[key] += value
                if bar:
                    bar.advance(sum(last - first for _modality, _folder, first, last in theirs))
    finally:
        if helper is not None:
            helper.close()


def _remove_set(path: Path) -> None:
    """Delete a previous working set (after the swap): a forked helper removes every other folder of it while
    this process removes the others (Linux; elsewhere all here). Killed halfway, what is left is a build
    folder, which the next run removes (recover_leftovers)."""
    folders = sorted(p for p in path.iterdir() if p.is_dir() and not p.is_symlink()) if path.is_dir() else []
    theirs = folders[1::2] if len(folders) >= 2 and can_fork() else []

    def remove_theirs() -> None:
        for folder in theirs:
            remove_tree(folder)

    helper = ForkedHelper(remove_theirs, "materialize") if theirs else None
    try:
        for folder in folders:
            if folder not in theirs:
                remove_tree(folder)
        if helper is not None:
            helper.result()
    finally:
        if helper is not None:
            helper.close()
    remove_tree(path)


def _pairs(selected: list[Selected], names: list[str], modality: str, raw_base: str) -> list[tuple[str, str, str]]:
    """(source folder, source name, name in the set) of each selected sample's file of one modality."""
    batch_base = {batch_id: os.path.join(raw_base, batch_id, "") for batch_id in {item.batch_id for item in selected}}
    extension = contract.MODALITIES[modality][1]
    pairs = []
    for item, name in zip(selected, names, strict=True):
        head, _, tail = item.sample["files"][modality].rpartition("/")
        pairs.append((batch_base[item.batch_id] + head, tail, name + extension))
    return pairs


def _write_index(build_base: str, index_head: dict[str, Any], selected: list[Selected], names: list[str],
                 folders: list[tuple[str, str, str]], read: list[IndexFields]) -> None:
    """Write index.json and index.csv into the build folder; `read`: the fields of the samples not read yet."""
    found = iter(read)
    fields = [item.fields if item.fields is not None else next(found) for item in selected]
    rows = _index_rows(selected, names, folders, fields)
    index_doc: WorkingIndex = {**index_head, "samples": rows}  # type: ignore[typeddict-item]
    with open(os.path.join(build_base, "index.json"), "wb") as out:
        out.write(orjson.dumps(index_doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n")
    with open(os.path.join(build_base, "index.csv"), "w") as out:
        out.write(_index_csv(rows, index_head["modalities"]))


def _index_rows(selected: list[Selected], names: list[str], folders: list[tuple[str, str, str]],
                fields: list[IndexFields]) -> list[IndexRow]:
    """index.json's samples: name, files, sources and the annotation's fields, in working-set order."""
    rows: list[IndexRow] = []
    for index, (item, name, annotation_fields) in enumerate(zip(selected, names, fields, strict=True)):
        files, source = {}, {}
        for modality, folder, extension in folders:
            files[modality] = f"{folder}/{name}{extension}"
            source[modality] = f"{item.batch_id}/{item.sample['files'][modality]}"
        rows.append({"index": index, "name": name, "batch_id": item.batch_id, "sample_id": item.sample["sample_id"],
                     "files": files, "source": source, **annotation_fields})
    return rows


INDEX_CSV_COLUMNS = ["index", "name", "batch_id", "sample_id", "azimuth_deg", "elevation_deg", "distance_m",
                     "rig", "pose_set", "frame", "visible_fraction"]


def _index_csv(rows: list[IndexRow], modalities: list[str]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    head, tail = INDEX_CSV_COLUMNS[:4], INDEX_CSV_COLUMNS[4:]
    writer.writerow([*head, *modalities, *tail])
    # itemgetter of two or more keys returns a tuple (of one, the value itself: hence the extra key, dropped)
    head_of, tail_of, by_modality = itemgetter(*head), itemgetter(*tail), itemgetter(*modalities, modalities[0])
    cells: list[Mapping[str, Any]] = list(rows)  # read by column name
    writer.writerows([head_of(row) + by_modality(row["files"])[:-1] + tail_of(row) for row in cells])
    return buffer.getvalue()


def read_index(out_dir: Path) -> WorkingIndex:
    """The working set's index.json, checked against schemas/index.schema.json: one edited by hand, damaged, or
    written by another version of pose-sync is an error naming the file and the field, and how to rebuild it."""
    index_file = out_dir / "index.json"
    if not index_file.is_file():
        raise PoseFactoryError("there is no working set yet", where=str(out_dir),
                               hint="run `dvc repro` or `pose-sync prepare-batch BATCH_ID`")
    hint = "rebuild the working set: `dvc repro` (dvc.lock records the set, so DVC sees the change and rebuilds it)"
    try:
        index = schemas.load_json(index_file)
    except SchemaError as exc:
        exc.hint = hint
        raise
    schemas.check(index, "index", str(index_file), hint=hint)
    return index


def describe(out_dir: Path) -> dict[str, Any]:
    """What the current working set holds (from its index.json)."""
    index = read_index(out_dir)
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
