"""Atomic, idempotent outputs under one prefix: stage, then commit with ``_SUCCESS``.

Protocol for an output prefix ``OUT`` (one writer at a time):

1. ``begin``: remove stale ``OUT/_staging/`` left by killed runs; a new attempt writes
   only under ``OUT/_staging/<attempt>/``. The committed output, if any, stays valid.
2. ``commit``: remove ``OUT/_SUCCESS`` (from here readers see nothing), replace the
   committed trees (``rows/``) by the staged ones, write the small files
   (``summary.json``, ``manifest.json``), write ``OUT/_SUCCESS`` last, drop the staging.

A prefix without ``_SUCCESS`` is absent. Staged data lives under a ``_``-prefixed folder,
which every reader here skips, so it never leaks into a committed read.
"""

from __future__ import annotations

import json
import uuid

from jobs.storage import join, move_tree, remove, url_to_fs, write_bytes

SUCCESS = "_SUCCESS"
STAGING = "_staging"
MANIFEST = "manifest.json"


class OutputCommit:
    """Staging and commit of one output prefix.

    Args:
        uri: The output prefix.
        storage_options: fsspec options for it.
    """

    def __init__(self, uri: str, storage_options: dict | None = None):
        self.uri = uri
        self.fs, self.path = url_to_fs(uri, storage_options)
        self.attempt = uuid.uuid4().hex[:12]
        self.staging = join(self.path, STAGING, self.attempt)

    def committed_manifest(self) -> dict | None:
        """The manifest of the committed output, or None if nothing is committed."""
        if not self.fs.exists(join(self.path, SUCCESS)):
            return None
        return self.read_json(MANIFEST)

    def read_json(self, name: str) -> dict:
        with self.fs.open(join(self.path, name), "rb") as f:
            return json.loads(f.read())

    def begin(self) -> None:
        """Drop stale staging from earlier (killed) attempts and start a new one."""
        remove(self.fs, join(self.path, STAGING))
        self.fs.makedirs(self.staging, exist_ok=True)

    def staged(self, name: str) -> str:
        """Path of ``name`` inside this attempt's staging area."""
        return join(self.staging, name)

    def commit(self, trees: list[str], files: dict[str, bytes]) -> None:
        """Publish the staged ``trees`` and the small ``files``; ``_SUCCESS`` last."""
        remove(self.fs, join(self.path, SUCCESS))
        for name in files:
            remove(self.fs, join(self.path, name))
        for tree in trees:
            remove(self.fs, join(self.path, tree))
            if self.fs.exists(self.staged(tree)):
                move_tree(self.fs, self.staged(tree), join(self.path, tree))
        for name, data in files.items():
            write_bytes(self.fs, join(self.path, name), data)
        write_bytes(self.fs, join(self.path, SUCCESS), b"")
        self.abort()

    def abort(self) -> None:
        """Remove this attempt's staging (the committed output is untouched)."""
        remove(self.fs, join(self.path, STAGING))
