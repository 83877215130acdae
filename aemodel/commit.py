"""Prefixes that aescore owns, and a commit with no unsafe window (docs/reliability.md).

Layout of an output prefix ``OUT`` (scores and model artefacts alike)::

    OUT/_aescore.json             ownership marker, written before anything else
    OUT/_SUCCESS                  the pointer: JSON naming the committed run folder
    OUT/runs/<run>/_attempt.json  who started this run, and the pointer it saw then
    OUT/runs/<run>/...            the run's files (rows/, summary.json; model.json, ...)
    OUT/runs/<run>/_SUCCESS       written once the run's files are complete

The rules:

1. Ownership: a run writes into ``OUT`` only if it is missing, empty, or carries the marker
   of the same kind; it deletes only its own run folder, run folders under ``OUT/runs/``
   that carry an ``_attempt.json``, and files an older aescore wrote that its manifest lists.
2. Commit: every file of a run is written inside its own folder; the one step that makes
   it visible is one write of the small ``OUT/_SUCCESS`` pointer (an atomic rename on
   local disks, one PUT on object stores). A kill at any point leaves the pointer naming
   the old complete run or the new complete one.
3. Once the pointer names a run, nothing deletes that run, whatever fails afterwards:
   ``abort`` and the clean-up read the pointer before deleting, a failure in the clean-up
   after the commit is a warning (the next run finishes it), and a run that committed
   never reports that it committed nothing.
4. Concurrent writers: the pointer is swapped only if it still is what the run saw when it
   began (a compare-and-swap: ``If-Match``/``If-None-Match`` on S3, a ``flock``-guarded
   compare on local disks; other stores compare then write, a window of milliseconds).
   The loser gets an ``OutputError`` and its run folder is removed; the winner deletes the
   run folders whose base pointer is stale, since none of those can commit any more.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import uuid
from datetime import datetime, timezone

import fsspec
from fsspec.implementations.local import LocalFileSystem

from aemodel.store import entries, entry_names, is_s3, join, read_bytes, remove, url_to_fs, write_bytes

MARKER = "_aescore.json"
SUCCESS = "_SUCCESS"
RUNS = "runs"
ATTEMPT = "_attempt.json"
LOCK = "_commit.lock"
MANIFEST = "manifest.json"
# Files of the scores layout before run folders (aescore 0.1): recognised so an upgrade can
# replace them, and read so nightly history still sees old nights.
LEGACY_SCORE_FILES = ("summary.json", "report.html", MANIFEST, "drift.json")


class OutputError(ValueError):
    """An output prefix cannot be written safely (not aescore's, overlaps the input, lost a race)."""


@contextlib.contextmanager
def denied_as_output_error(uri: str):
    """A ``PermissionError`` (S3's 403 Forbidden: no path in its message), or an entry of the prefix of another
    kind than aescore's, as an ``OutputError`` naming ``uri``."""
    try:
        yield
    except PermissionError as e:
        raise OutputError(f"{uri}: access denied ({e}); check the credentials for this location") from e
    except (IsADirectoryError, NotADirectoryError) as e:  # _SUCCESS made a folder, runs/ made a file
        raise OutputError(f"{uri}: {type(e).__name__}: {e}; an entry aescore keeps there (_SUCCESS, _commit.lock, "
                          "runs) is not what aescore wrote: restore it, or choose another --out") from e


def _rename(src: str, dst: str) -> None:
    os.replace(src, dst)


def _delete(fs: fsspec.AbstractFileSystem, paths: list[str]) -> None:
    """Delete these files (one batch request on object stores)."""
    fs.rm(paths)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def parse_pointer(data: bytes | None) -> dict | None:
    """The commit pointer in the bytes of an ``OUT/_SUCCESS`` file; None if they hold none.

    Not a pointer: a missing file, the empty marker of the layout before run folders, a
    model artefact's version string (the flat artefact layout), anything else.
    """
    if not data or not data.strip():
        return None
    try:
        pointer = json.loads(data)
    except ValueError:
        return None
    return pointer if isinstance(pointer, dict) and isinstance(pointer.get("run"), str) else None


def check_bucket(fs: fsspec.AbstractFileSystem, path: str, uri: str) -> None:
    """Refuse an S3 prefix whose bucket does not exist (aescore never creates buckets)."""
    if is_s3(fs):
        bucket = path.split("/", 1)[0]
        if not fs.exists(bucket):
            raise OutputError(f"{uri}: bucket {bucket!r} does not exist or is not accessible; aescore never "
                              "creates buckets (create it with the region and policies you need)")


def _legacy_manifest(fs: fsspec.AbstractFileSystem, path: str) -> dict | None:
    """The manifest of a scoring output of the layout before run folders, if ``path`` holds one."""
    data = read_bytes(fs, join(path, SUCCESS))
    if data is None or data.strip():
        return None
    try:
        manifest = json.loads(read_bytes(fs, join(path, MANIFEST)) or b"null")
    except ValueError:
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("kind") == "aescore-score" else None


def _legacy_score_files(manifest: dict) -> list[str]:
    """What an output of the layout before run folders holds of aescore's: the row files its manifest lists
    (``rows/*.parquet`` only, never a path that leaves the prefix) and its small files."""
    listed = [e["path"] for e in manifest.get("outputs", []) if isinstance(e, dict) and isinstance(e.get("path"), str)]
    return [p for p in listed if _OWN_ROWS.fullmatch(p) and ".." not in p.split("/")] + list(LEGACY_SCORE_FILES)


RUN_NAME = re.compile(r"\d{8}T\d{6}Z-[0-9a-f]{8}")
"""How aescore names a run folder (``OutputCommit.name``)."""
_OWN_ROWS = re.compile(r"rows/[^/]+\.parquet")
_OWN_FILES = frozenset({ATTEMPT, SUCCESS, MANIFEST, "summary.json", "report.html", "drift.json", "drift.html",
                        "comparison.json", "model.safetensors", "model.json", "train_rows.bloom", "metrics.json"})
"""What a run folder of aescore's holds: these files and row files (``rows/*.parquet``), nothing else."""


def remove_own_files(fs: fsspec.AbstractFileSystem, folder: str, names: list[str] | None = None) -> list[str]:
    """Delete aescore's files in ``folder`` (or only ``names``, relative to it), then the folders left empty.

    aescore's files are ``_OWN_FILES`` and row files; a listed name that is a folder, or
    any other file, is never deleted.

    Returns:
        What stays in ``folder`` because aescore did not write it (relative paths, with
        ``names`` None): a user's file put there.
    """
    fs.invalidate_cache()
    base = folder.rstrip("/")
    if names is None:
        found = [p[len(base) + 1:] for p in fs.find(base)] if fs.isdir(base) else []
    else:
        found = [n for n in names if fs.isfile(join(base, n))]
    own = [n for n in found if n in _OWN_FILES or _OWN_ROWS.fullmatch(n)]
    # The attempt marker last: a clean-up cut short leaves a folder the next run still knows
    # as a stale attempt of aescore's and finishes.
    for batch in ([n for n in own if n != ATTEMPT], [n for n in own if n == ATTEMPT]):
        if batch:
            _delete(fs, [join(base, n) for n in batch])
    for sub in sorted({n.rsplit("/", 1)[0] for n in own if "/" in n}, key=len, reverse=True):
        _remove_if_empty(fs, join(base, sub))
    if names is None:
        _remove_if_empty(fs, join(base, "rows"))  # emptied by a clean-up that was cut short
        _remove_if_empty(fs, base)
    return [n for n in found if n not in own] if names is None else []


def _remove_if_empty(fs: fsspec.AbstractFileSystem, path: str) -> None:
    """A local folder left empty goes (``rmdir`` refuses a folder that is not); object stores have no folders."""
    if isinstance(fs, LocalFileSystem):
        with contextlib.suppress(OSError):
            os.rmdir(path)


def _refuse_a_file(fs: fsspec.AbstractFileSystem, path: str, uri: str) -> None:
    if fs.isfile(path):
        raise OutputError(f"--out {uri} is a file; aescore writes a folder of outputs there: choose a folder path")


def _marked(fs: fsspec.AbstractFileSystem, path: str, uri: str, kind: str) -> bool:
    """True if ``path`` holds aescore's marker for ``kind``; False if no marker.

    Raises:
        OutputError: ``path`` is a file (checked first: reading a marker under it would fail
            with NotADirectoryError), or the marker names another kind of output.
    """
    _refuse_a_file(fs, path, uri)
    marker = read_bytes(fs, join(path, MARKER))
    if marker is None:
        return False
    try:
        found = json.loads(marker).get("kind")
    except (ValueError, AttributeError):
        found = None
    if found != kind:
        raise OutputError(f"{uri} holds aescore {found or 'unknown'} output, not {kind}; choose another prefix")
    return True


def claim_prefix(uri: str, kind: str, storage_options: dict | None = None,
                 adopt: bool = False, write: bool = True) -> list[str]:
    """Make sure this run may write into ``uri``; mark it as aescore's if it is new.

    Args:
        uri: The output prefix.
        kind: What aescore keeps there ("scores", "model", ...); a prefix of another kind is refused.
        storage_options: fsspec options.
        adopt: Also accept a prefix that holds no marker but a complete output of ``kind``
            from an older aescore (a caller-checked condition, e.g. a model artefact).
        write: Write the marker now; False only checks (a run that may still fail writes it later).

    Returns:
        The files of a legacy (pre-run-folder) scoring output found there, relative to
        ``uri``, to be deleted after the commit; empty otherwise.

    Raises:
        OutputError: The prefix holds files aescore did not write, or another kind of output.
    """
    fs, path = url_to_fs(uri, storage_options)
    check_bucket(fs, path, uri)
    fs.invalidate_cache()
    if _marked(fs, path, uri, kind):
        return []
    found = entry_names(fs, path)
    legacy = _legacy_manifest(fs, path) if kind == "scores" else None
    if found and not (legacy or adopt):
        shown = ", ".join(sorted(found)[:5]) + (", ..." if len(found) > 5 else "")
        raise OutputError(f"{uri} already holds files that aescore did not write ({shown}); aescore writes only "
                          "into an empty or new prefix, or one it wrote before. Choose another --out")
    if write:
        write_bytes(fs, join(path, MARKER),
                    json.dumps({"format": "aescore-output", "kind": kind, "created_at": _now()}).encode())
    return _legacy_score_files(legacy) if legacy else []


def _pointer_token(fs: fsspec.AbstractFileSystem, path: str) -> tuple[bytes | None, str | None]:
    """The pointer's content and, on S3, its ETag (for a conditional replace)."""
    pointer = join(path, SUCCESS)
    if is_s3(fs):
        try:
            info = fs.info(pointer)
        except FileNotFoundError:
            return None, None
        return read_bytes(fs, pointer), info.get("ETag")
    return read_bytes(fs, pointer), None


def read_pointer(uri: str, storage_options: dict | None = None) -> dict | None:
    """The committed pointer of ``uri`` (``{"run": "runs/<run>", ...}``), or None if nothing is committed.

    An output of the layout before run folders (empty ``_SUCCESS``) reads as ``{"run": None}``:
    its files sit at the top of the prefix.

    Raises:
        OutputError: ``_SUCCESS`` holds something else.
    """
    fs, path = url_to_fs(uri, storage_options)
    data = read_bytes(fs, join(path, SUCCESS))
    if data is None:
        return None
    if not data.strip():
        return {"run": None}
    pointer = parse_pointer(data)
    if pointer is None:
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
    data = read_bytes(fs, join(path, name))
    return None if data is None else json.loads(data)


class OutputCommit:
    """One run's writes into an owned prefix, made visible by one pointer swap.

    Use: ``begin()`` (or ``observe()`` early and ``begin()`` when the run is ready to
    write), write into ``path_of(...)``, then ``commit(files, run_id)``; on any failure
    ``abort()``, which never deletes a run the pointer names.

    Args:
        uri: The output prefix.
        storage_options: fsspec options for it.
        kind: What the prefix holds ("scores", "model").
    """

    def __init__(self, uri: str, storage_options: dict | None = None, kind: str = "scores"):
        self.uri, self.kind, self.options = uri, kind, storage_options
        self.fs, self.path = url_to_fs(uri, storage_options)
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        self.name = f"{stamp}-{uuid.uuid4().hex[:8]}"
        self.run = join(self.path, RUNS, self.name)
        self.base: bytes | None = None
        self.base_etag: str | None = None
        self.replaces: list[str] = []
        """Files of an older layout at the top of the prefix (relative paths), deleted after the commit."""
        self.new_prefix = False
        self.created: list[str] = []
        self.observed = self.begun = self.committed = False
        self.warnings: list[str] = []
        """What the clean-up after the commit could not do (the committed run is complete regardless)."""

    @property
    def run_uri(self) -> str:
        """The URI of this run's folder (what the pointer will name)."""
        return join(self.uri, RUNS, self.name)

    def path_of(self, name: str) -> str:
        """Path of ``name`` inside this run's folder (for filesystem calls and Ray writes)."""
        return join(self.run, name)

    def observe(self) -> None:
        """Remember the pointer as it is now: this run commits only if nobody else commits first.

        Writes nothing. A run that decides early what it replaces (training checks for an
        existing model before it trains) observes then and begins later.
        """
        with denied_as_output_error(self.uri):
            self.fs.invalidate_cache()
            _refuse_a_file(self.fs, self.path, self.uri)
            self.new_prefix = not self.fs.exists(join(self.path, MARKER))
            # Local folders this run creates (deepest first), removed again by abort if left empty.
            if isinstance(self.fs, LocalFileSystem):
                p = self.path.rstrip("/")
                while p and not self.fs.exists(p):
                    self.created.append(p)
                    p = os.path.dirname(p)
            self.base, self.base_etag = _pointer_token(self.fs, self.path)
            if self.base and self.base.strip() and parse_pointer(self.base) is None and not (
                    self.kind == "model" and self.fs.exists(join(self.path, "model.json"))):  # the flat artefact layout
                raise OutputError(f"{self.uri}: {SUCCESS} is not an aescore commit pointer (edited?); aescore does not "
                                  "replace it: restore it, or choose another --out")
        self.observed = True

    def begin(self, adopt: bool = False) -> None:
        """Claim the prefix and open this run's folder (observing the pointer first, unless done).

        Args:
            adopt: Accept an unmarked prefix holding an older aescore's complete output of this kind.
        """
        if not self.observed:
            self.observe()
        try:
            with denied_as_output_error(self.uri):
                self.replaces = claim_prefix(self.uri, self.kind, self.options, adopt=adopt) or self.replaces
                pointer = parse_pointer(self.base)
                write_bytes(self.fs, self.path_of(ATTEMPT), json.dumps({
                    "run": f"{RUNS}/{self.name}", "base": pointer["run"] if pointer else None,
                    "host": socket.gethostname(), "pid": os.getpid(), "started_at": _now()}).encode())
        except BaseException:  # a marker or folders written before the failure go again
            with contextlib.suppress(Exception):
                self.abort()
            raise
        self.begun = True

    def commit(self, files: dict[str, bytes], run_id: str, mark: bool = True, **pointer_fields) -> list[str]:
        """Write ``files`` into the run folder, then swap the pointer to it; clean up after.

        Args:
            files: Name -> bytes, written into the run folder first.
            run_id: Recorded in the pointer.
            mark: Write the run folder's own empty ``_SUCCESS`` (False where the run wrote one itself).
            pointer_fields: More JSON fields for the pointer (a model's version).

        Returns:
            The clean-up's warnings (also in ``self.warnings``): after the swap nothing raises
            but an interrupt, and nothing deletes this run.

        Raises:
            OutputError: Another run committed to the prefix since this one began.
        """
        with denied_as_output_error(self.uri):
            for name, data in files.items():
                write_bytes(self.fs, self.path_of(name), data)
            if mark:
                write_bytes(self.fs, self.path_of(SUCCESS), b"")
            pointer = json.dumps({"run": f"{RUNS}/{self.name}", "run_id": run_id, **pointer_fields,
                                  "committed_at": _now()}).encode()
            self._swap_pointer(pointer)
        self.committed = True
        self._cleanup()
        return self.warnings

    def names_this_run(self) -> bool:
        """Whether the committed pointer names this run (read from storage, not remembered)."""
        if self.committed:
            return True
        pointer = parse_pointer(_pointer_token(self.fs, self.path)[0])
        return pointer is not None and pointer["run"] == f"{RUNS}/{self.name}"

    def abort(self) -> None:
        """Remove this run's folder, unless the pointer names it (then the run is committed: keep it).

        A prefix this run claimed and that still holds no other run is returned to how it
        was found (no marker, no empty runs/ folder).
        """
        self.fs.invalidate_cache()
        if self.names_this_run():
            return
        remove_own_files(self.fs, self.run)  # a file someone put into it meanwhile stays
        remove(self.fs, join(self.path, f"{SUCCESS}.{self.name}.tmp"))  # a local swap interrupted before its rename
        runs = join(self.path, RUNS)
        self.fs.invalidate_cache()
        if self.new_prefix and not self.fs.exists(join(self.path, SUCCESS)) and not self.fs.find(runs):
            remove(self.fs, runs)
            remove(self.fs, join(self.path, MARKER))
            remove(self.fs, join(self.path, LOCK))
        for folder in self.created:
            with contextlib.suppress(OSError):  # not empty (another writer), or already gone
                os.rmdir(folder)

    def lost_race(self) -> bool:
        """Whether another run has committed to the prefix since this one began (never true once this one has)."""
        if self.names_this_run():
            return False
        return _pointer_token(self.fs, self.path)[0] != self.base

    def conflict(self) -> OutputError:
        """The error of a run that lost the race to commit."""
        return OutputError(f"another aescore run committed to {self.uri} while this one was running (or its {SUCCESS} "
                           "was edited or removed); this run committed nothing (one writer per output prefix at a time)")

    def _swap_pointer(self, pointer: bytes) -> None:
        target = join(self.path, SUCCESS)
        if is_s3(self.fs):
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

        fd = os.open(join(self.path, LOCK), os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _warn(self, what: str, e: Exception) -> None:
        self.warnings.append(f"{self.uri}: committed, but the clean-up could not {what} "
                             f"({type(e).__name__}: {' '.join(str(e).split())[:200]}); the next run retries")

    def _try(self, what: str, fn, *args) -> None:
        """Run one clean-up step; a failure becomes a warning (the committed run stays complete)."""
        try:
            fn(*args)
        except Exception as e:  # noqa: BLE001 - after the commit nothing may undo it
            self._warn(what, e)

    def _cleanup(self) -> None:
        """Delete run folders that can never commit (their base pointer is stale) and an older layout's files.

        Only while the pointer still names this run: a run committed after this one does its own.
        Entries of ``runs/`` that are not folders (a ``.DS_Store``) are not aescore's and stay.
        """
        self.fs.invalidate_cache()
        try:
            current = parse_pointer(_pointer_token(self.fs, self.path)[0])
        except Exception as e:  # noqa: BLE001
            self._warn("read the pointer back", e)
            return
        mine = f"{RUNS}/{self.name}"
        if current is None or current["run"] != mine:
            return
        runs = join(self.path, RUNS)
        try:
            found = entries(self.fs, runs)
        except Exception as e:  # noqa: BLE001
            self._warn(f"list {RUNS}/", e)
            found = []
        for name, is_folder in found:
            if is_folder and name != self.name:
                self._try(f"remove the older run folder {RUNS}/{name}", self._remove_stale, join(runs, name), mine)
        if self.replaces:  # an older layout's files: only those it listed, files only, inside the prefix
            self._try("remove the older layout's files", remove_own_files, self.fs, self.path, self.replaces)
        if isinstance(self.fs, LocalFileSystem):  # pointer temp files of runs killed mid-swap
            self._try("remove pointer files of killed runs", self._remove_pointer_temps)

    def _remove_pointer_temps(self) -> None:
        for name, is_folder in entries(self.fs, self.path):
            if not is_folder and re.fullmatch(rf"{SUCCESS}\.{RUN_NAME.pattern}\.tmp", name):
                remove(self.fs, join(self.path, name))

    def _remove_stale(self, folder: str, mine: str) -> None:
        name = folder.rstrip("/").rsplit("/", 1)[-1]
        attempt = read_bytes(self.fs, join(folder, ATTEMPT))
        if attempt is None:
            if RUN_NAME.fullmatch(name) and not self.fs.find(folder):  # an empty run folder left by a kill
                remove(self.fs, folder)
            return
        try:
            base = json.loads(attempt).get("base")
        except (ValueError, AttributeError):
            return
        if base != mine:  # started before this commit: it can never commit now
            kept = remove_own_files(self.fs, folder)
            if kept:
                self.warnings.append(f"{self.uri}: {RUNS}/{name} also holds files aescore did not write "
                                     f"({', '.join(kept[:3])}{', ...' if len(kept) > 3 else ''}); they stay")
