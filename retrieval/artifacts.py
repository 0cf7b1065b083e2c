"""Dataset folders on shared storage: a `data_dir` URI mirrored into a cache on each node.

`AppConfig.data_dir` is a local folder or a URI that `pyarrow.fs.FileSystem.from_uri`
opens (`s3://bucket/prefix?endpoint_override=host:9000&scheme=http`, `gs://…`,
`hdfs://…`, `file:///…`). A local folder is read where it is, untouched. A URI is
mirrored, on the node where the code runs, into `<cache_dir>/<16 hex of the URI's
sha256>/`: `catalog.parquet`, `interactions.parquet` and `index/**` (dotfiles left
out). What a mirror fetches, keeps and checks:

- Shard files the manifest lists (index, rows, full vectors) are hashed as they
  arrive and must match their sha256 in the manifest, or IndexIntegrityError names
  the file and nothing of it is left. A cached copy with the listed digest is kept
  (one this module verified and that has not changed since, by size and mtime, is
  not hashed again).
- The other files (the parquet files, the collaborative models, `fusion.json`) have
  no digest anywhere: they are fetched again when the storage's size or
  modification time differs from those of the copy last fetched, and must arrive
  whole (the listed size).
- The manifest is read every time. When it differs from the one last mirrored (a
  new upload), the local index becomes the upload: files the upload lacks (change
  logs, snapshot generations of the old index) are removed and the manifest is
  renamed in last. When it is the same, the node's own changes stay (the shards'
  change logs and snapshots from `POST /v1/items`, a user's erasure from
  `interactions.parquet`): change logs are not fetched again, nor the shard files a
  local snapshot replaced.

Every file arrives under a temporary name beside its place and is renamed over it
when complete and verified. One mirror per folder runs at a time (a file lock), so
replicas starting together on one node download once and the others find it done.
Storage failures (unreachable, no such bucket, a bad URI) raise `ArtifactError`.
`push_data_dir` uploads a folder `llmrec build` wrote.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pyarrow as pa
import pyarrow.fs as pafs

from retrieval.changes import CHANGES_SUFFIX
from retrieval.config import is_uri, resolve_path
from retrieval.index_files import MANIFEST_NAME, Manifest, load_manifest, parse_manifest
from retrieval.integrity import IndexIntegrityError, file_lock, sha256_of, write_atomic

__all__ = [
    "ArtifactError",
    "MirrorReport",
    "cache_folder",
    "local_data_dir",
    "manifest_of",
    "mirror_data_dir",
    "mirrored_data_dir",
    "push_data_dir",
    "redacted",
]

log = logging.getLogger(__name__)

INDEX_DIR = "index"
TOP_FILES = ("catalog.parquet", "interactions.parquet")
MANIFEST_REL = f"{INDEX_DIR}/{MANIFEST_NAME}"
STATE_NAME = ".mirror.json"
LOCK_NAME = ".mirror.lock"
CHUNK = 4 << 20


class ArtifactError(RuntimeError):
    """A data dir on shared storage could not be opened, listed, read or written."""


@dataclass
class MirrorReport:
    """What one mirror did, by path inside the data dir."""

    folder: Path
    copied: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    bytes_copied: int = 0


@dataclass(frozen=True)
class _Remote:
    path: str
    size: int
    mtime_ns: int


def redacted(uri: str) -> str:
    """`uri` without credentials written into it (`s3://key:secret@bucket/…`)."""
    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri
    return parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]).geturl()


def _display(uri: str, rel: str) -> str:
    """How errors and logs name the file `rel` of the data dir at `uri` (no query, no keys)."""
    parts = urlsplit(redacted(uri))
    return urlunsplit((parts.scheme, parts.netloc, f"{parts.path.rstrip('/')}/{rel}", "", ""))


def cache_folder(uri: str, cache_root: Path) -> Path:
    """The folder under `cache_root` that mirrors `uri`."""
    return Path(cache_root) / hashlib.sha256(uri.encode()).hexdigest()[:16]


def _wanted(rel: str) -> bool:
    """Whether a path inside a data dir is one replicas read (dotfiles are locks, keys,
    temporaries)."""
    parts = rel.split("/")
    if any(p.startswith(".") for p in parts):
        return False
    return rel in TOP_FILES or (parts[0] == INDEX_DIR and len(parts) > 1)


def _open(uri: str) -> tuple[pafs.FileSystem, str]:
    try:
        fs, root = pafs.FileSystem.from_uri(uri)
    except (OSError, pa.ArrowException) as exc:
        why = str(exc).replace(uri, redacted(uri))  # pyarrow quotes the URI it could not parse
        raise ArtifactError(f"{redacted(uri)}: cannot open it with pyarrow.fs ({why})") from exc
    return fs, root.rstrip("/")


def _list(fs: pafs.FileSystem, root: str, uri: str) -> dict[str, _Remote]:
    try:
        infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    except FileNotFoundError as exc:
        raise ArtifactError(
            f"{redacted(uri)}: nothing there; upload a built data dir (`llmrec data push`)"
        ) from exc
    except (OSError, pa.ArrowException) as exc:
        raise ArtifactError(f"{redacted(uri)}: cannot list it ({exc})") from exc
    out = {}
    for info in infos:
        rel = info.path[len(root) + 1 :]
        if info.type == pafs.FileType.File and _wanted(rel):
            out[rel] = _Remote(info.path, int(info.size or 0), int(info.mtime_ns or 0))
    return out


def _read(fs: pafs.FileSystem, path: str, where: str) -> bytes:
    try:
        with fs.open_input_stream(path) as f:
            return f.read()
    except FileNotFoundError as exc:
        raise ArtifactError(f"{where}: missing; build locally, then `llmrec data push`") from exc
    except (OSError, pa.ArrowException) as exc:
        raise ArtifactError(f"{where}: cannot read it ({exc})") from exc


def manifest_of(data_dir: str) -> Manifest:
    """The index manifest of `data_dir`, mirroring nothing: from the folder, or read from
    the storage for a URI. Raises IndexIntegrityError (missing, malformed) or ArtifactError."""
    if not is_uri(data_dir):
        return load_manifest(resolve_path(data_dir) / INDEX_DIR)
    fs, root = _open(data_dir)
    where = _display(data_dir, MANIFEST_REL)
    return parse_manifest(_read(fs, f"{root}/{MANIFEST_REL}", where), where)


def _download(
    fs: pafs.FileSystem, remote: _Remote, dest: Path, want: str | None, where: str
) -> None:
    """Copy one file to `dest` through a temporary file beside it; `want`: its sha256."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    digest, size = hashlib.sha256(), 0
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with fs.open_input_stream(remote.path) as src:
                    while chunk := src.read(CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
                        size += len(chunk)
            except (OSError, pa.ArrowException) as exc:
                raise ArtifactError(f"{where}: copy to {dest} failed ({exc})") from exc
            out.flush()
            os.fsync(out.fileno())
        if size != remote.size:
            raise ArtifactError(f"{where}: {size} bytes arrived, the storage lists {remote.size}")
        got = digest.hexdigest()
        if want is not None and got != want:
            raise IndexIntegrityError(
                f"{where}: sha256 {got[:12]}… does not match manifest {want[:12]}…; "
                "upload the data dir again (`llmrec data push`)"
            )
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _has_digest(path: Path, want: str, seen: dict[str, Any] | None) -> bool:
    """Whether `path` holds the file of digest `want`; a copy `seen` verified unchanged since
    (same size and mtime) is taken as it is."""
    if not path.is_file():
        return False
    st = path.stat()
    if seen and (seen.get("sha256"), seen.get("size"), seen.get("mtime_ns")) == (
        want,
        st.st_size,
        st.st_mtime_ns,
    ):
        return True
    return sha256_of(path) == want


def _load_state(folder: Path) -> dict[str, Any]:
    try:
        state = json.loads((folder / STATE_NAME).read_bytes())
        return state if isinstance(state, dict) else {}
    except (OSError, ValueError):
        return {}


def _local_names(index_dir: Path) -> set[str] | None:
    """The files the node's own manifest names (None when it has none it can read)."""
    try:
        return set(load_manifest(index_dir).digests())
    except IndexIntegrityError:
        return None


def mirror_data_dir(uri: str, folder: Path) -> MirrorReport:
    """Make `folder` a verified copy of the data dir at `uri` (see the module docstring for
    what is fetched, kept and removed). Raises ArtifactError when the storage fails or has no
    index, IndexIntegrityError when a file does not match the manifest."""
    fs, root = _open(uri)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    report = MirrorReport(folder)
    with file_lock(folder / LOCK_NAME):
        for part in folder.rglob(".*.part"):  # left by a mirror that died mid-copy
            part.unlink()
        remote = _list(fs, root, uri)
        where = _display(uri, MANIFEST_REL)
        if MANIFEST_REL not in remote:
            raise ArtifactError(f"{where}: missing; build locally, then `llmrec data push`")
        raw = _read(fs, remote[MANIFEST_REL].path, where)
        raw_sha = hashlib.sha256(raw).hexdigest()
        digests = {f"{INDEX_DIR}/{n}": d for n, d in parse_manifest(raw, where).digests().items()}
        state = _load_state(folder)
        index_dir = folder / INDEX_DIR
        # The upload mirrored last: the node's own manifest says which of its files still count.
        ours = _local_names(index_dir) if state.get("manifest_sha256") == raw_sha else None
        seen: dict[str, Any] = state.get("files") or {}
        files: dict[str, Any] = {}
        for rel in sorted((remote.keys() | digests.keys()) - {MANIFEST_REL}):
            if ours is not None and (
                rel.endswith(CHANGES_SUFFIX)
                or (rel in digests and rel[len(INDEX_DIR) + 1 :] not in ours)
            ):
                continue  # the node's own change log, or a file its own snapshot replaced
            files[rel] = _mirror_file(
                fs, uri, folder / rel, rel, remote.get(rel), digests.get(rel), seen.get(rel), report
            )
        if ours is None:  # a new upload, or no usable copy: the index becomes the upload
            index_dir.mkdir(parents=True, exist_ok=True)
            write_atomic(index_dir / MANIFEST_NAME, raw)
            report.removed = _remove_stale(folder, set(remote))
        state = {"uri": redacted(uri), "manifest_sha256": raw_sha, "files": files}
        write_atomic(folder / STATE_NAME, json.dumps(state).encode())
    return report


def _mirror_file(
    fs: pafs.FileSystem,
    uri: str,
    dest: Path,
    rel: str,
    remote: _Remote | None,
    want: str | None,
    seen: dict[str, Any] | None,
    report: MirrorReport,
) -> dict[str, Any]:
    """Keep or fetch one file (`want`: its manifest digest); returns its entry of the state."""
    if want is not None and _has_digest(dest, want, seen):
        report.kept.append(rel)
    elif remote is None:
        raise ArtifactError(f"{_display(uri, rel)}: the manifest lists it, the storage lacks it")
    elif (
        want is None
        and dest.is_file()
        and seen is not None
        and (seen.get("remote_size"), seen.get("remote_mtime_ns")) == (remote.size, remote.mtime_ns)
    ):
        report.kept.append(rel)
    else:
        started = time.perf_counter()
        _download(fs, remote, dest, want, _display(uri, rel))
        report.copied.append(rel)
        report.bytes_copied += remote.size
        log.info(
            "%s: %.1f MiB in %.1fs",
            _display(uri, rel),
            remote.size / 2**20,
            time.perf_counter() - started,
        )
    st = dest.stat()
    entry: dict[str, Any] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": want}
    if remote is not None:
        entry |= {"remote_size": remote.size, "remote_mtime_ns": remote.mtime_ns}
    return entry


def _remove_stale(folder: Path, remote: set[str]) -> list[str]:
    """Delete the index files an upload does not hold (its predecessor's logs, generations)."""
    removed = []
    for path in sorted((folder / INDEX_DIR).rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.is_file() and _wanted(rel) and rel not in remote:
            path.unlink()
            removed.append(rel)
    return removed


def local_data_dir(data_dir: str, cache_root: Path) -> Path:
    """The folder to read `data_dir` from on this node: a local path as given (no copy), a
    URI's mirror under `cache_root`, brought up to date now (`mirror_data_dir`)."""
    if not is_uri(data_dir):
        return Path(data_dir)
    report = mirror_data_dir(data_dir, cache_folder(data_dir, cache_root))
    log.info(
        "%s mirrored in %s: %d files copied (%.1f MiB), %d kept, %d removed",
        redacted(data_dir),
        report.folder,
        len(report.copied),
        report.bytes_copied / 2**20,
        len(report.kept),
        len(report.removed),
    )
    return report.folder


_mirrored: dict[tuple[str, Path], Path] = {}
_mirrored_lock = threading.Lock()


def mirrored_data_dir(data_dir: str, cache_root: Path) -> Path:
    """`local_data_dir` once per process (what `AppConfig.data_path` returns): the first call
    mirrors, later ones return the folder, so an upload reaches a replica when it starts."""
    key = (data_dir, Path(cache_root))
    with _mirrored_lock:
        if key not in _mirrored:
            _mirrored[key] = local_data_dir(data_dir, cache_root)
        return _mirrored[key]


def push_data_dir(local: Path, uri: str) -> list[str]:
    """Upload the data dir `llmrec build` wrote at `local` to `uri`; returns what was uploaded.

    Sends `catalog.parquet`, `interactions.parquet` and `index/**` without dotfiles (locks,
    `.log_key`) and without `feedback.jsonl` (fold it first: `llmrec build --incremental`).
    Files of an earlier upload that this one lacks are deleted before the manifest goes,
    last: a node that mirrors meanwhile fails verification and retries, it never mixes a
    stale change log into the new index.
    """
    local = Path(local)
    load_manifest(local / INDEX_DIR)  # refuse a folder without a readable index
    rels = sorted(
        p.relative_to(local).as_posix()
        for p in local.rglob("*")
        if p.is_file() and _wanted(p.relative_to(local).as_posix())
    )
    fs, root = _open(uri)
    try:
        before = set(_list(fs, root, uri))
    except ArtifactError:
        before = set()  # nothing uploaded there yet
    source = pafs.LocalFileSystem()
    for rel in [r for r in rels if r != MANIFEST_REL]:
        _upload(source, local / rel, fs, f"{root}/{rel}", _display(uri, rel))
    for rel in sorted(before - set(rels)):
        try:
            fs.delete_file(f"{root}/{rel}")
        except (OSError, pa.ArrowException) as exc:
            raise ArtifactError(f"{_display(uri, rel)}: cannot delete it ({exc})") from exc
    _upload(source, local / MANIFEST_REL, fs, f"{root}/{MANIFEST_REL}", _display(uri, MANIFEST_REL))
    return rels


def _upload(
    source: pafs.FileSystem, path: Path, fs: pafs.FileSystem, dest: str, where: str
) -> None:
    try:
        pafs.copy_files(
            str(path), dest, source_filesystem=source, destination_filesystem=fs, chunk_size=CHUNK
        )
    except (OSError, pa.ArrowException) as exc:
        raise ArtifactError(f"{where}: upload failed ({exc})") from exc
    log.info("%s: uploaded %.1f MiB", where, path.stat().st_size / 2**20)
