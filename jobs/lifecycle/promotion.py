"""What ``aescore promote`` moves, its audit log and its lock: an MLflow registry alias, or a pointer file.

A ledger is one promotion target and the audit log stored beside its models:

- **registry** (``models:/NAME@ALIAS``): each record is a tag of the registered model,
  ``aescore.audit.<ALIAS>.<NNNNNN>`` holding the record's JSON (the MLflow UI shows them with
  the model). The lock is a registered model named ``NAME.promotion-lock``: creating a name
  is atomic in every MLflow store (a unique key), so exactly one process holds it; it is
  deleted when the promotion ends, also on an error or an interrupt.
- **pointer file** (``CHAMPION.json``, as ``aescore train --publish-latest`` writes, any
  fsspec URI): each record is a file ``CHAMPION.json.audit/NNNNNN.json``, created only if
  absent (``O_EXCL`` locally, ``If-None-Match`` on S3). The lock is an exclusive ``flock`` on
  ``CHAMPION.json.audit/_lock`` locally (released by the OS if the process dies), and that
  object created only if absent on S3 (deleted at the end). Other stores have no atomic
  create: a check then a write, a window of milliseconds.

A model is ``{"id", "aescore_version", "uri"}``: ``id`` is the registry version number or
the model's URI, what the target names.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import re
import socket
import time
from datetime import datetime, timezone

from fsspec.implementations.local import LocalFileSystem

from aemodel.store import absolute_uri, is_s3, join, read_bytes, remove, url_to_fs, write_bytes
from jobs.runtime.errors import InputError, OutputError

AUDIT_TAG = "aescore.audit."
LOCK_TAG = "aescore.promotion_lock"
RECORD_NAME = re.compile(r"(\d{6})\.json")


def who() -> str:
    """Who promotes, from the environment: ``AESCORE_USER`` (a CI or service account), else the login name, @ host."""
    user = os.environ.get("AESCORE_USER")
    if not user:
        try:
            user = getpass.getuser()
        except (KeyError, OSError):  # a container user with no passwd entry
            user = f"uid {os.getuid()}"
    return f"{user}@{socket.gethostname()}"


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _wait_for(acquire, wait: float, held) -> None:
    """Call ``acquire()`` until it returns True, at most ``wait`` seconds; then ``held()``'s error."""
    deadline = time.monotonic() + wait
    while not acquire():
        if time.monotonic() >= deadline:
            raise held()
        time.sleep(0.25)


class RegistryLedger:
    """``models:/NAME@ALIAS`` in an MLflow registry; records are the registered model's tags."""

    def __init__(self, client, tracking_uri: str, name: str, alias: str):
        from jobs.lifecycle.tracking import VERSION_TAG

        self.c, self.tracking_uri, self.name, self.alias = client, tracking_uri, name, alias
        self._version_tag = VERSION_TAG
        if alias.isdigit():
            raise InputError(f"--to {alias}: a registry alias, not a version number (e.g. champion)")
        try:
            client.get_registered_model(name)
        except Exception as e:  # noqa: BLE001 - not found, no server: one line
            text = " ".join(str(e).split())
            if "RESOURCE_DOES_NOT_EXIST" in str(getattr(e, "error_code", "")) + text or "not found" in text.lower():
                raise InputError(f"{name}: no such registered model in the MLflow registry at {tracking_uri}") from e
            raise InputError(f"the MLflow registry at {tracking_uri} did not answer for {name}: {type(e).__name__}: "
                             f"{text[:300]}{'...' if len(text) > 300 else ''}") from e

    @property
    def target(self) -> str:
        return f"models:/{self.name}@{self.alias}"

    def _model(self, mv, given: str) -> dict:
        version = (mv.tags or {}).get(self._version_tag)
        if version is None:
            raise InputError(f"{given}: version {mv.version} of {self.name} was not registered by aescore train "
                             "--register (it has no aescore.version tag): not an aescore model")
        return {"id": str(mv.version), "aescore_version": version, "uri": f"models:/{self.name}/{mv.version}"}

    def current(self) -> dict | None:
        """The version the alias names now (None: the alias is not set)."""
        try:
            mv = self.c.get_model_version_by_alias(self.name, self.alias)
        except Exception as e:  # noqa: BLE001 - MLflow says "not found" by an error
            if "RESOURCE_DOES_NOT_EXIST" in str(getattr(e, "error_code", "")) + str(e) or "not found" in str(e):
                return None
            raise
        return self._model(mv, self.target)

    def resolve(self, candidate: str, flag: str = "--from") -> dict:
        """``candidate`` (a version number, or an alias such as ``challenger``) as a model."""
        try:
            mv = (self.c.get_model_version(self.name, candidate) if candidate.isdigit()
                  else self.c.get_model_version_by_alias(self.name, candidate))
        except Exception as e:  # noqa: BLE001
            raise InputError(f"{flag} {candidate}: no version or alias of that name in {self.name} "
                             f"({' '.join(str(e).split())[:200]})") from e
        return self._model(mv, f"{flag} {candidate}")

    def records(self) -> list[dict]:
        """The audit log of this alias, oldest first."""
        prefix = f"{AUDIT_TAG}{self.alias}."
        tags = self.c.get_registered_model(self.name).tags or {}
        return [json.loads(tags[k]) for k in sorted(k for k in tags if k.startswith(prefix))]

    def append(self, record: dict) -> None:
        self.c.set_registered_model_tag(self.name, f"{AUDIT_TAG}{self.alias}.{record['seq']:06d}",
                                        json.dumps(record, sort_keys=True))

    def move(self, model: dict) -> None:
        self.c.set_registered_model_alias(self.name, self.alias, model["id"])

    @contextlib.contextmanager
    def lock(self, wait: float, break_lock: bool = False):
        """Hold ``NAME.promotion-lock`` (a registered model) while the block runs."""
        from mlflow.exceptions import MlflowException

        lock = f"{self.name}.promotion-lock"
        holder = json.dumps({"by": who(), "pid": os.getpid(), "since": now()})
        if break_lock:
            self._remove_lock(lock)

        def acquire() -> bool:
            try:
                self.c.create_registered_model(lock, tags={LOCK_TAG: holder},
                                               description=f"aescore promote of {self.name} in progress")
                return True
            except MlflowException as e:
                if "RESOURCE_ALREADY_EXISTS" in str(getattr(e, "error_code", "")) + str(e):
                    return False
                raise

        def held() -> InputError:
            try:
                info = (self.c.get_registered_model(lock).tags or {}).get(LOCK_TAG, "unknown holder")
            except Exception:  # noqa: BLE001 - released meanwhile
                info = "released just now"
            return InputError(f"another promotion of {self.name} holds its lock (registered model {lock}: {info}) for "
                              f"more than {wait:g} s; if no promotion runs (it was killed), run again with "
                              "--break-lock")

        _wait_for(acquire, wait, held)
        try:
            yield
        finally:
            self._remove_lock(lock)

    def _remove_lock(self, lock: str) -> None:
        try:
            tags = self.c.get_registered_model(lock).tags or {}
        except Exception:  # noqa: BLE001 - no lock there
            return
        if LOCK_TAG not in tags:  # a model of the user's that happens to have the name: never deleted
            raise InputError(f"{lock} is a registered model aescore did not create; rename it (aescore uses that name "
                             "as the promotion lock)")
        self.c.delete_registered_model(lock)


def create_exclusive(fs, path: str, data: bytes) -> bool:
    """Write ``path`` only if nothing is there (False: something was); atomic locally and on S3."""
    if isinstance(fs, LocalFileSystem):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return True
    if is_s3(fs):
        bucket, key = path.split("/", 1)
        try:
            fs.call_s3("put_object", Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
        except Exception as e:  # s3fs translates botocore errors; 412 means the object is there
            if isinstance(e, FileExistsError) or "PreconditionFailed" in f"{type(e).__name__} {e}":
                return False
            raise
        fs.invalidate_cache(path)
        return True
    if fs.exists(path):  # no atomic create here: check, then write
        return False
    write_bytes(fs, path, data)
    return True


class PointerLedger:
    """A pointer file (``{"model_uri", "version"}``); records are files in ``<pointer>.audit/``."""

    def __init__(self, uri: str, storage_options: dict | None, loader):
        from jobs.data.storage import check_pointer_target

        self.uri, self.options, self.loader = uri, storage_options, loader
        self.fs, self.path = url_to_fs(uri, storage_options)
        self.audit = self.path.rstrip("/") + ".audit"
        try:
            check_pointer_target(uri, storage_options)
        except InputError as e:
            if "not an aescore model pointer" in str(e):
                raise InputError(f"--to {uri} holds a file that is not an aescore model pointer (JSON with "
                                 "model_uri): aescore neither moves nor overwrites it") from e
            raise InputError(str(e).replace("--publish-latest", "--to")) from e
        if self.fs.isfile(self.audit):
            raise InputError(f"--to {uri}: {self.audit} is a file, not aescore's audit folder; move it away")

    @property
    def target(self) -> str:
        return absolute_uri(self.uri)

    def current(self) -> dict | None:
        data = read_bytes(self.fs, self.path)
        if data is None:
            return None
        pointer = json.loads(data)
        version = pointer.get("version") or self.loader(pointer["model_uri"], self.options).version
        return {"id": pointer["model_uri"], "aescore_version": version, "uri": pointer["model_uri"]}

    def resolve(self, candidate: str, flag: str = "--from") -> dict:
        """``candidate`` (a pointer file or a model URI) as a model: its artefact is loaded (checksums checked)."""
        from jobs.data.storage import resolve_model_uri

        uri = resolve_model_uri(candidate, self.options)
        if "://" not in uri:
            uri = os.path.abspath(uri)
        try:
            art = self.loader(uri, self.options)
        except Exception as e:  # noqa: BLE001 - not a model: one line
            raise InputError(f"{flag} {candidate}: not a loadable aescore model "
                             f"({' '.join(str(e).split())[:200]})") from e
        return {"id": uri, "aescore_version": art.version, "uri": uri}

    def records(self) -> list[dict]:
        try:
            names = sorted(n.rstrip("/").rsplit("/", 1)[-1] for n in self.fs.ls(self.audit, detail=False))
        except FileNotFoundError:
            return []
        return [json.loads(read_bytes(self.fs, join(self.audit, n))) for n in names if RECORD_NAME.fullmatch(n)]

    def append(self, record: dict) -> None:
        self.fs.makedirs(self.audit, exist_ok=True)
        name = join(self.audit, f"{record['seq']:06d}.json")
        if not create_exclusive(self.fs, name, json.dumps(record, sort_keys=True, indent=1).encode()):
            raise OutputError(f"{name} was written by another promotion at the same time (its lock was broken?); "
                              "nothing was moved: run again")

    def move(self, model: dict) -> None:
        from jobs.data.storage import publish_pointer

        publish_pointer(self.uri, model["uri"], model["aescore_version"], self.options)

    @contextlib.contextmanager
    def lock(self, wait: float, break_lock: bool = False):
        """Hold the audit folder's lock while the block runs (see the module's docstring)."""
        self.fs.makedirs(self.audit, exist_ok=True)
        lock = join(self.audit, "_lock")
        if isinstance(self.fs, LocalFileSystem):
            import fcntl

            fd = os.open(lock, os.O_CREAT | os.O_RDWR, 0o644)

            def acquire() -> bool:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    return False
                os.ftruncate(fd, 0)  # who holds it, for a waiting promotion's message
                os.pwrite(fd, json.dumps({"by": who(), "pid": os.getpid(), "since": now()}).encode(), 0)
                return True

            def held() -> InputError:
                info = (read_bytes(self.fs, lock) or b"").decode(errors="replace") or "unknown holder"
                return InputError(f"another promotion of {self.uri} holds its lock ({lock}: {info}) for more than "
                                  f"{wait:g} s; the lock is released when that process ends")

            try:
                _wait_for(acquire, wait, held)
                yield
            finally:
                os.close(fd)  # releases the flock
            return
        holder = json.dumps({"by": who(), "pid": os.getpid(), "since": now()}).encode()
        if break_lock:
            remove(self.fs, lock)

        def held() -> InputError:
            info = (read_bytes(self.fs, lock) or b"released just now").decode(errors="replace")
            return InputError(f"another promotion of {self.uri} holds its lock ({lock}: {info}) for more than "
                              f"{wait:g} s; if no promotion runs (it was killed), run again with --break-lock")

        _wait_for(lambda: create_exclusive(self.fs, lock, holder), wait, held)
        try:
            yield
        finally:
            remove(self.fs, lock)
