"""Paths and object storage: fsspec URIs in, Parquet file lists and Arrow filesystems out.

Every path in every job goes through here, so a local path, ``file://``, ``s3://``,
``gs://`` or ``memory://`` behave the same. Credentials come from the environment or
``storage_options``; nothing here logs them.
"""

from __future__ import annotations

from dataclasses import dataclass

import fsspec
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from jobs.errors import InputError


def url_to_fs(uri: str, storage_options: dict | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem and the path inside it for ``uri``."""
    try:
        return fsspec.core.url_to_fs(uri, **(storage_options or {}))
    except (ImportError, ValueError) as e:
        raise InputError(f"cannot open {uri}: {e}") from e


def arrow_filesystem(fs: fsspec.AbstractFileSystem) -> pafs.FileSystem:
    """A pyarrow filesystem for Ray Data: native for local paths, fsspec-backed otherwise."""
    if isinstance(fs, LocalFileSystem):
        return pafs.LocalFileSystem()
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs))


def join(uri: str, *parts: str) -> str:
    return "/".join([uri.rstrip("/"), *parts])


def _is_data_file(path: str) -> bool:
    name = path.rstrip("/").rsplit("/", 1)[-1]
    return not name.startswith(("_", ".")) and name.endswith(".parquet")


def list_parquet_files(uri: str, storage_options: dict | None = None) -> tuple[fsspec.AbstractFileSystem, list[str]]:
    """The Parquet files at ``uri``: a file, a directory/prefix (recursive) or a glob.

    Files and folders whose names start with ``_`` or ``.`` (markers, staging) are skipped.

    Raises:
        InputError: The path does not exist or holds no Parquet file.
    """
    fs, path = url_to_fs(uri, storage_options)
    try:
        if fsspec.core.has_magic(path):
            files = sorted(p for p in fs.glob(path) if fs.isfile(p))
        elif fs.isfile(path):
            files = [path]
        elif fs.isdir(path):
            files = sorted(p for p in fs.find(path) if _is_data_file(p)
                           and not any(part.startswith(("_", ".")) for part in p[len(path):].split("/")[:-1]))
        else:
            raise InputError(f"input path does not exist: {uri}")
    except (FileNotFoundError, PermissionError) as e:
        raise InputError(f"cannot list {uri}: {e}") from e
    if not files:
        raise InputError(f"no Parquet files found at {uri}")
    return fs, files


@dataclass
class ParquetFileInfo:
    """Footer facts of one Parquet file."""

    path: str
    uri: str
    num_rows: int
    size: int
    schema: object  # pyarrow.Schema


def inspect_parquet_files(fs: fsspec.AbstractFileSystem, files: list[str]) -> list[ParquetFileInfo]:
    """Read each file's footer (not its data).

    Raises:
        InputError: A file is not readable Parquet (corrupt, truncated, another format).
    """
    infos = []
    for path in files:
        uri = fs.unstrip_protocol(path)
        try:
            with fs.open(path, "rb") as f:
                pf = pq.ParquetFile(f)
                infos.append(ParquetFileInfo(path=path, uri=uri, num_rows=pf.metadata.num_rows,
                                             size=fs.size(path), schema=pf.schema_arrow))
        except FileNotFoundError as e:
            raise InputError(f"{uri}: file disappeared while reading ({e})") from e
        except Exception as e:  # pyarrow raises ArrowInvalid/OSError for corrupt footers
            raise InputError(f"{uri}: not a readable Parquet file ({type(e).__name__}: {e})") from e
    return infos


def remove(fs: fsspec.AbstractFileSystem, path: str) -> None:
    """Delete a file or a whole prefix if it exists."""
    if fs.exists(path):
        fs.rm(path, recursive=True)


def write_bytes(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    parent = path.rsplit("/", 1)[0]
    fs.makedirs(parent, exist_ok=True)
    with fs.open(path, "wb") as f:
        f.write(data)
