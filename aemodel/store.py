"""Small fsspec helpers shared by the artefact, the commit protocol and the jobs.

Every path goes through ``url_to_fs``, so a local path, ``file://``, ``s3://``, ``gs://``
or ``memory://`` behave the same. Nothing here logs storage options (they may hold keys).
"""

from __future__ import annotations

import os

import fsspec


class StorageError(ValueError):
    """A URI cannot be opened (unknown protocol, missing filesystem package, malformed)."""


def url_to_fs(uri: str, storage_options: dict | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem and the path inside it for ``uri``.

    Raises:
        StorageError: The URI's protocol is unknown or its filesystem cannot be built.
    """
    try:
        return fsspec.core.url_to_fs(uri, **(storage_options or {}))
    except (ImportError, ValueError, TypeError) as e:
        # The options' values are not echoed (they may hold a secret); fsspec's message names the protocol.
        raise StorageError(f"cannot open {uri}: {type(e).__name__}: {e}") from e


def absolute_uri(uri: str) -> str:
    """A local path as an absolute path (what summaries and manifests store); any other URI as it is."""
    if "://" in uri and not uri.startswith("file://"):
        return uri
    return os.path.abspath(os.path.expanduser(uri.removeprefix("file://")))


def join(uri: str, *parts: str) -> str:
    """``uri`` and ``parts`` joined with single slashes."""
    return "/".join([uri.rstrip("/"), *parts])


def is_s3(fs: fsspec.AbstractFileSystem) -> bool:
    """Whether ``fs`` is S3 (conditional writes, ETags)."""
    protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    return "s3" in protocols or "s3a" in protocols


def read_bytes(fs: fsspec.AbstractFileSystem, path: str) -> bytes | None:
    """The file's bytes, or None if it does not exist."""
    try:
        with fs.open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


def write_bytes(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    """Write ``data`` to ``path``, creating its parent folders."""
    parent = path.rsplit("/", 1)[0]
    fs.makedirs(parent, exist_ok=True)
    with fs.open(path, "wb") as f:
        f.write(data)


def remove(fs: fsspec.AbstractFileSystem, path: str) -> None:
    """Delete a file or a whole prefix if it exists."""
    if fs.exists(path):
        fs.rm(path, recursive=True)


def entries(fs: fsspec.AbstractFileSystem, path: str) -> list[tuple[str, bool]]:
    """(name, is a folder) of each entry directly under ``path`` (none if it is not a folder)."""
    if not fs.isdir(path):
        return []
    return [(e["name"].rstrip("/").rsplit("/", 1)[-1], e.get("type") == "directory")
            for e in fs.ls(path, detail=True)]


def entry_names(fs: fsspec.AbstractFileSystem, path: str) -> list[str]:
    """Names of the files and folders directly under ``path`` (none if it is not a folder)."""
    return [name for name, _ in entries(fs, path)]
