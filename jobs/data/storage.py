"""Paths and object storage: fsspec URIs in, Parquet file lists and Arrow filesystems out.

Every path in every job goes through here, so a local path, ``file://``, ``s3://``,
``gs://`` or ``memory://`` behave the same. Credentials come from the environment or
``storage_options``; nothing here logs them.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass, field

import fsspec
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from aemodel.store import url_to_fs, write_bytes
from jobs.runtime.errors import InputError, OutputError


def arrow_filesystem(fs: fsspec.AbstractFileSystem) -> pafs.FileSystem:
    """A pyarrow filesystem for Ray Data's reads and writes.

    Local paths and S3 use pyarrow's native filesystems. For S3 that matters beyond
    speed: under transient errors (503 SlowDown) the fsspec bridge can report a file as
    zero bytes, and Ray Data then silently skips it; the native client retries
    (standard AWS strategy) and fails loudly. Other schemes go through fsspec.
    """
    if isinstance(fs, LocalFileSystem):
        return pafs.LocalFileSystem()
    if "s3" in (fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)):
        return native_s3(getattr(fs, "storage_options", {}) or {})
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs))


def native_s3(options: dict) -> pafs.S3FileSystem:
    """pyarrow's S3 client configured from s3fs-style storage options (env fills the rest)."""
    kwargs: dict = {"retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=10)}
    endpoint = (options.get("endpoint_url") or (options.get("client_kwargs") or {}).get("endpoint_url")
                or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL"))
    if endpoint:
        scheme, _, host = endpoint.partition("://")
        kwargs.update(endpoint_override=host or scheme, scheme=scheme if host else "https")
    for ours, theirs in (("key", "access_key"), ("secret", "secret_key"), ("token", "session_token")):
        if options.get(ours):
            kwargs[theirs] = options[ours]
    if options.get("anon"):
        kwargs["anonymous"] = True
    region = options.get("region") or (options.get("client_kwargs") or {}).get("region_name") \
        or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        kwargs["region"] = region
    return pafs.S3FileSystem(**kwargs)


def _hidden(path: str, root: str) -> bool:
    """A file under ``root`` inside (or named) a ``_``/``.`` folder or file: markers, run metadata."""
    return any(part.startswith(("_", ".")) for part in path[len(root.rstrip("/")):].split("/") if part)


def list_parquet_files(uri: str, storage_options: dict | None = None
                       ) -> tuple[fsspec.AbstractFileSystem, list[str], list[str]]:
    """The Parquet files at ``uri``: a file, a directory/prefix (recursive) or a glob.

    In a directory, files and folders whose names start with ``_`` or ``.`` (markers,
    staging, caches) are skipped, and so are files without the ``.parquet`` extension and
    entries that are not regular files: those (the hidden ones only if they end in
    ``.parquet``) are returned as the third element so callers can report them (a Parquet
    file someone saved without its extension, or under ``_late/``, is then named in the
    output, not lost without a word).

    Raises:
        InputError: The path does not exist or holds no Parquet file.
    """
    fs, path = url_to_fs(uri, storage_options)
    skipped: list[str] = []
    try:
        if fsspec.core.has_magic(path):
            files = sorted(p for p in fs.glob(path) if fs.isfile(p))  # isfile: regular files only
        elif fs.isfile(path):
            files = [path]
        elif fs.isdir(path):
            # detail: a FIFO or socket named *.parquet is listed too ("other"), and opening one blocks forever
            listed = fs.find(path, detail=True).items()
            found = sorted((p, info.get("type")) for p, info in listed if not _hidden(p, path))
            files = [p for p, kind in found if kind == "file" and p.endswith(".parquet")]
            skipped = [fs.unstrip_protocol(p) for p, kind in found if not (kind == "file" and p.endswith(".parquet"))]
            # Parquet files under a _ or . name (Spark's _temporary/, a .cache/) are not read, but named: the
            # markers there (_SUCCESS, .crc files) are not.
            skipped += sorted(fs.unstrip_protocol(p) for p, _ in listed if _hidden(p, path) and p.endswith(".parquet"))
        elif fs.exists(path):
            raise InputError(f"{uri} is not a regular file or a folder ({fs.info(path).get('type')}); aescore reads "
                             "Parquet files only")
        else:
            raise InputError(f"input path does not exist: {uri}")
    except InputError:
        raise
    except OSError as e:  # permissions, unreachable endpoints, storage errors after retries
        raise InputError(f"cannot list {uri}: {type(e).__name__}: {e}") from e
    if not files:
        extra = f" ({len(skipped)} file(s) without the .parquet extension, e.g. {skipped[0]})" if skipped else ""
        raise InputError(f"no Parquet files found at {uri}{extra}")
    return fs, files, skipped


def _canonical(uri: str, storage_options: dict | None) -> str:
    """A comparable form of ``uri``: protocol plus path, local paths resolved (symlinks too)."""
    fs, path = url_to_fs(uri, storage_options)
    if fsspec.core.has_magic(path):  # a glob: the folder it starts from
        path = path[:min(path.find(c) for c in "*?[" if c in path)].rsplit("/", 1)[0]
    if isinstance(fs, LocalFileSystem):
        return "file://" + os.path.realpath(path).rstrip("/")
    return fs.unstrip_protocol(path).rstrip("/")


def check_uris(paths: dict[str, str | None], storage_options: dict | None = None) -> None:
    """Refuse, before anything runs, an object-store URI with an empty path segment (``s3://b/out//x``).

    Object stores keep ``a//b`` as a key of its own and pyarrow's S3 client refuses it, so
    such a path would fail only after the scoring, at the first write.

    Raises:
        InputError: An empty segment in one of ``paths`` (flag -> URI).
    """
    for flag, uri in paths.items():
        if not uri:
            continue
        fs, path = url_to_fs(uri, storage_options)
        if not isinstance(fs, LocalFileSystem) and "//" in path.rstrip("/"):
            raise InputError(f"{flag} {uri} has an empty path segment ('//'), which an object store keeps as a key "
                             "of its own; remove the extra slash")


def is_within(uri: str, folder: str, storage_options: dict | None = None) -> bool:
    """Whether ``uri`` is ``folder`` or lies inside it (local paths compared resolved)."""
    inner, outer = _canonical(uri, storage_options), _canonical(folder, storage_options)
    return inner == outer or inner.startswith(outer + "/")


def check_no_overlap(out: str, inputs: dict[str, str | None], storage_options: dict | None = None) -> None:
    """Refuse an output prefix that contains, or lies inside, one of the ``inputs`` (flag -> URI).

    Raises:
        OutputError: The paths overlap (the run could delete or re-read its own input).
    """
    for flag, uri in inputs.items():
        if not uri:
            continue
        if is_within(out, uri, storage_options) or is_within(uri, out, storage_options):
            raise OutputError(f"--out {out} overlaps {flag} {uri}; the output must be a separate prefix, "
                              "neither inside the input nor containing it")


def check_shared_paths(paths: dict[str, str | None], nodes: int, shared_local: bool,
                       storage_options: dict | None = None) -> None:
    """Refuse node-local paths that tasks on other nodes of a multi-node cluster would use.

    Ray Data tasks and Train workers run on any node: a local path there names a different
    folder on each node, so a run would read part of its input, or write half its files
    where the driver never looks.

    Args:
        paths: flag -> URI that Ray tasks or workers read or write.
        nodes: Alive nodes in the cluster.
        shared_local: Local paths are on a filesystem every node mounts at the same place.

    Raises:
        InputError: A local path on a cluster of more than one node.
    """
    if nodes <= 1 or shared_local:
        return
    for flag, uri in paths.items():
        if uri and isinstance(url_to_fs(uri, storage_options)[0], LocalFileSystem):
            raise InputError(f"{flag} {uri} is a node-local path, but the Ray cluster has {nodes} nodes whose "
                             "tasks would each see their own disk; use shared storage (s3://, gs://, ...), or "
                             "pass --shared-local-paths if every node mounts that path (NFS)")


@dataclass
class ParquetFileInfo:
    """Footer facts of one Parquet file."""

    path: str
    uri: str
    num_rows: int
    size: int
    schema: object  # pyarrow.Schema
    etag: str | None = None
    """ETag (object stores) or modification time (file systems): changes when the file does."""
    wide_integers: dict[str, int] = field(default_factory=dict)
    """64-bit integer columns whose footer statistics show a value float64 cannot hold exactly
    (beyond +/- 2**53): name -> the largest absolute value."""
    row_groups: tuple[int, ...] = ()
    """Rows of each row group, in order (a Ray read task may read a run of them)."""


SAFE_INTEGER = 2 ** 53
"""Integers up to this size convert to float64 exactly."""


def wide_integer_columns(pf: pq.ParquetFile) -> dict[str, int]:
    """Top-level int64/uint64 columns whose row-group statistics reach beyond +/- 2**53 (name -> max |value|)."""
    md, out = pf.metadata, {}
    leaves = {md.schema.column(j).path: j for j in range(md.num_columns)}
    for f in pf.schema_arrow:
        if f.type not in (pa.int64(), pa.uint64()) or f.name not in leaves:
            continue
        j, widest = leaves[f.name], 0
        for r in range(md.num_row_groups):
            stats = md.row_group(r).column(j).statistics
            if stats is not None and stats.has_min_max:
                widest = max(widest, abs(int(stats.min)), abs(int(stats.max)))
        if widest > SAFE_INTEGER:
            out[f.name] = widest
    return out


def file_version(info: dict) -> str | None:
    """What changes when a file does: its ETag (object stores) or modification time (file systems)."""
    version = info.get("ETag") or info.get("etag") or info.get("mtime") or info.get("LastModified")
    return None if version is None else str(version).strip('"')


def check_unchanged(fs: fsspec.AbstractFileSystem, files: list[ParquetFileInfo]) -> None:
    """Refuse inputs that changed since their footers were checked (a file replaced while a run read it).

    Raises:
        InputError: A file is gone, or its size or version (ETag / mtime) changed; names it.
    """
    fs.invalidate_cache()
    for f in files:
        try:
            info = fs.info(f.path)
        except FileNotFoundError:
            raise InputError(f"{f.uri} disappeared while this run read it; nothing was committed") from None
        now = (int(info.get("size") or 0), file_version(info))
        if now != (f.size, f.etag):
            raise InputError(f"{f.uri} changed while this run read it (size {f.size} -> {now[0]}); what was read may "
                             "mix both versions, so nothing was committed: rerun once the input is complete")


def inspect_parquet_files(fs: fsspec.AbstractFileSystem, files: list[str]) -> list[ParquetFileInfo]:
    """Read each file's footer (not its data).

    Raises:
        InputError: A file is not readable Parquet (corrupt, truncated, another format).
    """
    infos = []
    for path in files:
        uri = fs.unstrip_protocol(path)
        try:
            info = fs.info(path)
            with fs.open(path, "rb") as f:
                pf = pq.ParquetFile(f)
                infos.append(ParquetFileInfo(path=path, uri=uri, num_rows=pf.metadata.num_rows,
                                             size=int(info.get("size") or 0), schema=pf.schema_arrow,
                                             etag=file_version(info), wide_integers=wide_integer_columns(pf),
                                             row_groups=tuple(pf.metadata.row_group(i).num_rows
                                                              for i in range(pf.metadata.num_row_groups))))
        except FileNotFoundError as e:
            raise InputError(f"{uri}: file disappeared while reading ({e})") from e
        except Exception as e:  # pyarrow raises ArrowInvalid/OSError for corrupt footers
            raise InputError(f"{uri}: not a readable Parquet file ({type(e).__name__}: {e})") from e
    return infos


def normalize_storage_options(options: dict | None) -> dict:
    """fsspec options from config strings: "true"/"false" become booleans."""
    out = {}
    for key, value in (options or {}).items():
        if isinstance(value, str) and value.lower() in ("true", "false"):
            value = value.lower() == "true"
        out[key] = value
    return out


REDACTED = "<redacted>"


def redact_config(config: dict) -> dict:
    """A config dict safe to write anywhere: storage option values, at any nesting (a nightly's
    ``score``, a sweep's ``train``), are never kept."""
    out = {}
    for key, value in config.items():
        if key == "storage_options" and isinstance(value, dict):
            out[key] = {k: REDACTED for k in value}
        else:
            out[key] = redact_config(value) if isinstance(value, dict) else value
    return out


def move_tree(fs: fsspec.AbstractFileSystem, src: str, dst: str) -> list[str]:
    """Move every file under ``src`` to the same relative path under ``dst``.

    Local moves are renames; on object stores this is copy + delete per object, so the
    caller must gate readers with a marker written afterwards (``_SUCCESS``).
    """
    moved = []
    for path in sorted(fs.find(src)):
        target = dst.rstrip("/") + "/" + path[len(src.rstrip("/")) + 1:]
        fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
        fs.mv(path, target)
        moved.append(target)
    return moved


def _pointer_target(fs: fsspec.AbstractFileSystem, path: str) -> object:
    """The ``model_uri`` value of the pointer file at ``path``, of any type.

    Raises:
        ValueError, KeyError, TypeError: The file is not a JSON object with ``model_uri``.
    """
    with fs.open(path, "rb") as f:
        return json.loads(f.read())["model_uri"]


def resolve_model_uri(uri: str, storage_options: dict | None = None) -> str:
    """A model URI, following a pointer file (JSON ``{"model_uri": ...}``) if ``uri`` is one.

    Training's ``--publish-latest`` writes such a pointer in one PUT (atomic on object
    stores), after the artefact is committed, so readers never see a half-written model.
    """
    fs, path = url_to_fs(uri, storage_options)
    try:
        if not fs.isfile(path):
            return uri
    except PermissionError as e:  # S3's 403 names no path
        raise InputError(f"--model {uri}: access denied ({e}); check the credentials for this location") from e
    try:
        target = _pointer_target(fs, path)
    except (ValueError, KeyError, TypeError) as e:
        raise InputError(f"{uri} is a file but not a model pointer (JSON with model_uri): {e}") from e
    if not isinstance(target, str) or not target:
        raise InputError(f"{uri} is a model pointer whose model_uri is not a URI string: {target!r}")
    return target


def check_pointer_target(uri: str, storage_options: dict | None = None) -> None:
    """Refuse a ``--publish-latest`` path that holds anything but a model pointer (before training).

    The pointer replaces the file at ``uri``; a file of the user's there is never overwritten.
    """
    fs, path = url_to_fs(uri, storage_options)
    if fs.isdir(path):
        raise InputError(f"--publish-latest {uri} is a folder; give the path of the pointer file to write")
    if not fs.isfile(path):
        return
    try:
        target = _pointer_target(fs, path)
    except (ValueError, KeyError, TypeError):
        target = None
    if not isinstance(target, str) or not target:
        raise InputError(f"--publish-latest {uri} already holds a file that is not an aescore model pointer "
                         "(JSON with model_uri); not overwriting it: choose another path")


def publish_pointer(uri: str, model_uri: str, version: str, storage_options: dict | None = None) -> None:
    """Write the pointer at ``uri`` to ``model_uri`` (one object write; atomic rename locally).

    A local ``model_uri`` is stored as an absolute path, so the pointer works from any directory.
    """
    check_pointer_target(uri, storage_options)
    fs, path = url_to_fs(uri, storage_options)
    if "://" not in model_uri:
        model_uri = os.path.abspath(model_uri)
    body = json.dumps({"model_uri": model_uri, "version": version}).encode()
    if isinstance(fs, LocalFileSystem):
        # A name of aescore's own beside the pointer: a file of the user's (LATEST.json.tmp) is never touched.
        tmp = f"{path}.aescore-{uuid.uuid4().hex[:12]}.tmp"
        write_bytes(fs, tmp, body)
        try:
            fs.mv(tmp, path)
        finally:
            if fs.exists(tmp):
                fs.rm(tmp)
    else:
        write_bytes(fs, path, body)
