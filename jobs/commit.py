"""Output prefixes that aescore owns, and a commit with no unsafe window.

Layout of an output prefix ``OUT``::

    OUT/_aescore.json           ownership marker, written before anything else
    OUT/_SUCCESS                the pointer: JSON naming the committed run folder
    OUT/runs/<run>/_attempt.json  who started this run, and the pointer it saw then
    OUT/runs/<run>/rows/...     the run's files (summary.json, manifest.json, ...)
    OUT/runs/<run>/_SUCCESS     written once the run's files are complete

Ownership: a run writes into ``OUT`` only if it is missing, empty, or carries the marker
of the same kind; it only ever deletes its own run folder and run folders under
``OUT/runs/`` that carry an ``_attempt.json``. Nothing else under ``OUT`` is touched.

Commit: every file of a run is written inside its own folder; the single step that makes
it visible is one write of the small ``OUT/_SUCCESS`` pointer (an atomic rename on local
disks, one PUT on object stores). A kill at any point leaves the pointer naming either the
old complete run or the new complete one. Older runs are deleted only afterwards.

Concurrent writers: the pointer is swapped only if it still is what the run saw when it
began (a compare-and-swap: ``If-Match``/``If-None-Match`` on S3, a ``flock``-guarded
compare on local disks; other stores compare then write, a window of milliseconds).
The loser gets an ``OutputError`` and its run folder is removed; the winner deletes
every run folder whose base pointer is stale, since none of those can commit any more.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import uuid
from datetime import datetime, timezone

import fsspec
from fsspec.implementations.local import LocalFileSystem

from jobs.errors import OutputError
from jobs.storage import entry_names, join, remove, url_to_fs, write_bytes

MARKER = "_aescore.json"
SUCCESS = "_SUCCESS"
RUNS = "runs"
ATTEMPT = "_attempt.json"
MANIFEST = "manifest.json"
# Files of the layout before run folders (aescore 0.1): recognised so an upgrade can
# replace them, and read so nightly history still sees old nights.
LEGACY_FILES = ("summary.json", "report.html", MANIFEST, "drift.json")


def _rename(src: str, dst: str) -> None:
    os.replace(src, dst)


def _is_s3(fs: fsspec.AbstractFileSystem) -> bool:
    protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    return "s3" in protocols or "s3a" in protocols


def _read(fs: fsspec.AbstractFileSystem, path: str) -> bytes | None:
    try:
        with fs.open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


def check_bucket(fs: fsspec.AbstractFileSystem, path: str, uri: str) -> None:
    """Refuse an S3 prefix whose bucket does not exist (aescore never creates buckets)."""
    if _is_s3(fs):
        bucket = path.split("/", 1)[0]
        if not fs.exists(bucket):
            raise OutputError(f"{uri}: bucket {bucket!r} does not exist or is not accessible; aescore never "
                              "creates buckets (create it with the region and policies you need)")


def _legacy_manifest(fs: fsspec.AbstractFileSystem, path: str) -> dict | None:
    """The manifest of a scoring output of the layout before run folders, if ``path`` holds one."""
    data = _read(fs, join(path, SUCCESS))
    if data is None or data.strip():
        return None
    try:
        manifest = json.loads(_read(fs, join(path, MANIFEST)) or b"null")
    except ValueError:
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("kind") == "aescore-score" else None


def _marked(fs: fsspec.AbstractFileSystem, path: str, uri: str, kind: str) -> bool:
    """True if ``path`` holds aescore's marker for ``kind``; False if no marker.

    Raises:
        OutputError: ``path`` is a file (checked first: reading a marker under it would fail
            with NotADirectoryError), or the marker names another kind of output.
    """
    if fs.isfile(path):
        raise OutputError(f"--out {uri} is a file; aescore writes a folder of outputs there: choose a folder path")
    marker = _read(fs, join(path, MARKER))
    if marker is None:
        return False
    try:
        found = json.loads(marker).get("kind")
    except (ValueError, AttributeError):
        found = None
    if found != kind:
        raise OutputError(f"{uri} holds aescore {found or 'unknown'} output, not {kind}; choose another prefix")
    return True


def check_model_prefix(uri: str, storage_options: dict | None = None) -> bool:
    """Check, before training, that a model may be written at ``uri``; True if one is committed there.

    Raises:
        OutputError: ``uri`` is a file, holds another kind of aescore output, or holds
            files aescore did not write (a model committed by an older aescore, without the
            marker, is accepted).
    """
    fs, path = url_to_fs(uri, storage_options)
    committed = fs.exists(join(path, "_SUCCESS"))
    # claim_prefix first refuses a file or another kind's marker (a scores folder is named as
    # such, never loaded as a broken model); the marker is written later, with the artefact.
    # An unmarked folder is adopted only if it holds a model (a Spark output has _SUCCESS too).
    claim_prefix(uri, "model", storage_options, adopt=committed and fs.exists(join(path, "model.json")), write=False)
    return committed


def claim_prefix(uri: str, kind: str, storage_options: dict | None = None,
                 adopt: bool = False, write: bool = True) -> dict | None:
    """Make sure this run may write into ``uri``; mark it as aescore's if it is new.

    Args:
        uri: The output prefix.
        kind: What aescore keeps there ("scores" or "model"); a prefix of another kind is refused.
        storage_options: fsspec options.
        adopt: Also accept a prefix that holds no marker but a complete output of ``kind``
            from an older aescore (a caller-checked condition, e.g. a model artefact).
        write: Write the marker now; False only checks (a run that may still fail writes it later).

    Returns:
        The manifest of a legacy (pre-run-folder) scoring output found there, to be replaced
        after the commit; None otherwise.

    Raises:
        OutputError: The prefix holds files aescore did not write, or another kind of output.
    """
    fs, path = url_to_fs(uri, storage_options)
    check_bucket(fs, path, uri)
    fs.invalidate_cache()
    if _marked(fs, path, uri, kind):
        return None
    entries = entry_names(fs, path)
    legacy = _legacy_manifest(fs, path) if kind == "scores" else None
    if entries and not (legacy or adopt):
        shown = ", ".join(sorted(entries)[:5]) + (", ..." if len(entries) > 5 else "")
        raise OutputError(f"{uri} already holds files that aescore did not write ({shown}); aescore writes only "
                          "into an empty or new prefix, or one it wrote before. Choose another --out")
    if write:
        body = json.dumps({"format": "aescore-output", "kind": kind,
                           "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}).encode()
        write_bytes(fs, join(path, MARKER), body)
    return legacy


def _pointer_token(fs: fsspec.AbstractFileSystem, path: str) -> tuple[bytes | None, str | None]:
    """The pointer's content and, on S3, its ETag (for a conditional replace)."""
    pointer = join(path, SUCCESS)
    if _is_s3(fs):
        try:
            info = fs.info(pointer)
        except FileNotFoundError:
            return None, None
        return _read(fs, pointer), info.get("ETag")
    return _read(fs, pointer), None


def read_pointer(uri: str, storage_options: dict | None = None) -> dict | None:
    """The committed pointer of ``uri`` (``{"run": "runs/<run>", ...}``), or None if nothing is committed.

    An output of the layout before run folders (empty ``_SUCCESS``) reads as ``{"run": None}``:
    its files sit at the top of the prefix.
    """
    fs, path = url_to_fs(uri, storage_options)
    data = _read(fs, join(path, SUCCESS))
    if data is None:
        return None
    if not data.strip():
        return {"run": None}
    try:
        pointer = json.loads(data)
    except ValueError as e:
        raise OutputError(f"{uri}: {SUCCESS} is not an aescore commit pointer ({e})") from e
    if not isinstance(pointer, dict) or not isinstance(pointer.get("run"), str):
        raise OutputError(f"{uri}: {SUCCESS} is not an aescore commit pointer")
    return pointer


def committed_run(uri: str, storage_options: dict | None = None) -> str | None:
    """The URI of the committed run folder under ``uri`` (where rows/ and summary.json are), or None."""
    pointer = read_pointer(uri, storage_options)
    if pointer is None:
        return None
    return uri.rstrip("/") if pointer["run"] is None else join(uri, pointer["run"])


def read_committed_json(uri: str, name: str, storage_options: dict | None = None) -> dict | None:
    """A JSON file (summary.json, manifest.json, ...) of the committed run, or None if not committed."""
    run = committed_run(uri, storage_options)
    if run is None:
        return None
    fs, path = url_to_fs(run, storage_options)
    data = _read(fs, join(path, name))
    return None if data is None else json.loads(data)


class OutputCommit:
    """One run's writes into an owned prefix, made visible by one pointer swap.

    Args:
        uri: The output prefix.
        storage_options: fsspec options for it.
        kind: What the prefix holds ("scores").
    """

    def __init__(self, uri: str, storage_options: dict | None = None, kind: str = "scores"):
        self.uri, self.kind, self.options = uri, kind, storage_options
        self.fs, self.path = url_to_fs(uri, storage_options)
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        self.name = f"{stamp}-{uuid.uuid4().hex[:8]}"
        self.run = join(self.path, RUNS, self.name)
        self.base: bytes | None = None
        self.base_etag: str | None = None
        self.legacy: dict | None = None
        self.new_prefix = False

    @property
    def run_uri(self) -> str:
        """The URI of this run's folder (what the pointer will name)."""
        return join(self.uri, RUNS, self.name)

    def path_of(self, name: str) -> str:
        """Path of ``name`` inside this run's folder (for filesystem calls and Ray writes)."""
        return join(self.run, name)

    def begin(self) -> None:
        """Claim the prefix, remember the pointer as it is now, and open this run's folder."""
        self.fs.invalidate_cache()
        self.new_prefix = not self.fs.exists(join(self.path, MARKER))
        # Local folders this run creates (deepest first), removed again by abort if left empty.
        self.created: list[str] = []
        if isinstance(self.fs, LocalFileSystem):
            p = self.path.rstrip("/")
            while p and not self.fs.exists(p):
                self.created.append(p)
                p = os.path.dirname(p)
        self.legacy = claim_prefix(self.uri, self.kind, self.options)
        self.base, self.base_etag = _pointer_token(self.fs, self.path)
        base_run = json.loads(self.base).get("run") if self.base and self.base.strip() else None
        write_bytes(self.fs, self.path_of(ATTEMPT), json.dumps({
            "run": f"{RUNS}/{self.name}", "base": base_run, "host": socket.gethostname(), "pid": os.getpid(),
            "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}).encode())

    def commit(self, files: dict[str, bytes], run_id: str) -> None:
        """Write ``files`` into the run folder, then swap the pointer to it; clean up after.

        Raises:
            OutputError: Another run committed to the prefix since this one began.
        """
        for name, data in files.items():
            write_bytes(self.fs, self.path_of(name), data)
        write_bytes(self.fs, self.path_of(SUCCESS), b"")
        pointer = json.dumps({"run": f"{RUNS}/{self.name}", "run_id": run_id,
                              "committed_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}).encode()
        self._swap_pointer(pointer)
        self._cleanup()

    def abort(self) -> None:
        """Remove this run's folder (the committed output is untouched).

        A prefix this run claimed and that still holds no other run is returned to how it
        was found (no marker, no empty runs/ folder).
        """
        remove(self.fs, self.run)
        runs = join(self.path, RUNS)
        self.fs.invalidate_cache()
        if self.new_prefix and not self.fs.exists(join(self.path, SUCCESS)) and not self.fs.find(runs):
            remove(self.fs, runs)
            remove(self.fs, join(self.path, MARKER))
            remove(self.fs, join(self.path, "_commit.lock"))
        for folder in getattr(self, "created", []):
            with contextlib.suppress(OSError):  # not empty (another writer), or already gone
                os.rmdir(folder)

    def lost_race(self) -> bool:
        """Whether another run has committed to the prefix since this one began."""
        return _pointer_token(self.fs, self.path)[0] != self.base

    def conflict(self) -> OutputError:
        return OutputError(f"another aescore run committed to {self.uri} while this one was running; this run "
                           "committed nothing (one writer per output prefix at a time)")

    def _swap_pointer(self, pointer: bytes) -> None:
        target = join(self.path, SUCCESS)
        if _is_s3(self.fs):
            bucket, key = target.split("/", 1)
            condition = {"IfMatch": self.base_etag} if self.base_etag else {"IfNoneMatch": "*"}
            try:
                self.fs.call_s3("put_object", Bucket=bucket, Key=key, Body=pointer, **condition)
            except Exception as e:  # s3fs translates botocore errors; 412 means the pointer moved
                if isinstance(e, FileExistsError) or "PreconditionFailed" in f"{type(e).__name__} {e}":
                    raise self.conflict() from e
                raise
            self.fs.invalidate_cache(target)
            return
        with self._local_lock():
            if _pointer_token(self.fs, self.path)[0] != self.base:
                raise self.conflict()
            if isinstance(self.fs, LocalFileSystem):
                tmp = f"{target}.{self.name}.tmp"
                write_bytes(self.fs, tmp, pointer)
                _rename(tmp, target)  # atomic on POSIX
            else:  # no rename or conditional write: compare, then one small write
                write_bytes(self.fs, target, pointer)

    @contextlib.contextmanager
    def _local_lock(self):
        """An exclusive ``flock`` on local disks (released by the OS if the process dies)."""
        if not isinstance(self.fs, LocalFileSystem):
            yield
            return
        import fcntl

        fd = os.open(join(self.path, "_commit.lock"), os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _cleanup(self) -> None:
        """Delete run folders that can never commit (their base pointer is stale) and legacy files."""
        runs = join(self.path, RUNS)
        self.fs.invalidate_cache()
        mine = f"{RUNS}/{self.name}"
        for folder in self.fs.ls(runs, detail=False) if self.fs.isdir(runs) else []:
            folder = folder.rstrip("/")
            if folder.rsplit("/", 1)[-1] == self.name:
                continue
            attempt = _read(self.fs, join(folder, ATTEMPT))
            if attempt is None:
                if not self.fs.find(folder):  # an empty folder left by a kill before _attempt.json
                    remove(self.fs, folder)
                continue
            try:
                base = json.loads(attempt).get("base")
            except ValueError:
                continue
            if base != mine:  # started before this commit: it can never commit now
                remove(self.fs, folder)
        if self.legacy:  # replace an output of the layout before run folders: only the files it listed
            for entry in self.legacy.get("outputs", []):
                remove(self.fs, join(self.path, entry["path"]))
            for name in LEGACY_FILES:
                remove(self.fs, join(self.path, name))
