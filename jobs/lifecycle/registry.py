"""Registry model URIs: ``models:/NAME/VERSION`` and ``models:/NAME@ALIAS`` as the folder that holds the artefact.

Resolved once, on the driver: the run folder the version was trained into while it still
holds that version (on object storage every worker reads it there), else MLflow's copy of
it (``jobs.lifecycle.tracking`` logs one with every training run), downloaded once to a local folder
(``cache_root``; versions never change). The artefact's checksums are checked on load, as
for any URI. MLflow is imported only for a registry URI.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any
from urllib.parse import quote

from jobs.runtime.errors import InputError
from jobs.lifecycle.tracking import ARTIFACT_URI_TAG, VERSION_TAG, client, resolved_tracking_uri

REGISTRY_SCHEME = "models:/"


def is_registry_uri(uri: str) -> bool:
    return uri.startswith(REGISTRY_SCHEME)


def _model_version(c, uri: str, tracking_uri: str, flag: str = "--model"):
    body = uri[len(REGISTRY_SCHEME):]
    try:
        if "@" in body:
            name, alias = body.split("@", 1)
            return c.get_model_version_by_alias(name, alias)
        name, _, number = body.partition("/")
        if not name or not number.isdigit():
            raise InputError(f"{flag} {uri}: expected models:/NAME/VERSION or models:/NAME@ALIAS")
        return c.get_model_version(name, number)
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 - not found, no server: one line
        raise InputError(f"{flag} {uri}: not found in the MLflow registry at {tracking_uri} "
                         f"({' '.join(str(e).split())[:300]})") from e


def _registry_client(uri: str, tracking_flag: str | None, flag: str = "--model"):
    tracking_uri = resolved_tracking_uri(tracking_flag)
    if tracking_uri is None:
        raise InputError(f"{flag} {uri}: a registry model needs --tracking-uri or MLFLOW_TRACKING_URI")
    return client(tracking_uri), tracking_uri


def pin_version(uri: str, tracking_flag: str | None, flag: str = "--model") -> str:
    """``models:/NAME@ALIAS`` as the ``models:/NAME/VERSION`` the alias names now; any other URI unchanged.

    A nightly backfill reads the alias once: a promotion during it does not change its model.
    """
    if not is_registry_uri(uri) or "@" not in uri:
        return uri
    c, tracking_uri = _registry_client(uri, tracking_flag, flag)
    mv = _model_version(c, uri, tracking_uri, flag)
    return f"{REGISTRY_SCHEME}{mv.name}/{mv.version}"


def pin_challenger(uri: str, champion: str, tracking_flag: str | None,
                   flag: str = "--challenger") -> tuple[str | None, str | None]:
    """A nightly's challenger pinned as the model is, or (None, why) when there is nothing to compare this night.

    A schedule keeps ``--challenger models:/NAME@challenger`` between trials: while that
    alias names no version, or names the model in service itself (after its promotion),
    nights score without a challenger (and without its cost) instead of failing.
    """
    if is_registry_uri(uri) and "@" in uri:
        c, tracking_uri = _registry_client(uri, tracking_flag, flag)
        name, alias = uri[len(REGISTRY_SCHEME):].split("@", 1)
        try:
            c.get_registered_model(name)
        except Exception as e:  # noqa: BLE001 - no such model, no server: one line
            raise InputError(f"{flag} {uri}: not found in the MLflow registry at {tracking_uri} "
                             f"({' '.join(str(e).split())[:300]})") from e
        try:
            mv = c.get_model_version_by_alias(name, alias)
        except Exception as e:  # noqa: BLE001 - the model exists: the alias is not set
            if "not found" not in str(e).lower():
                raise
            return None, f"{flag} {uri}: the alias names no version; scoring without a challenger"
        uri = f"{REGISTRY_SCHEME}{mv.name}/{mv.version}"
    if uri == champion:
        return None, f"{flag} {uri} is the model in service itself; scoring without a challenger"
    return uri, None


def resolve_model(uri: str, tracking_flag: str | None, storage_options: dict | None,
                  loader: Any = None, flag: str = "--model") -> tuple[str, dict | None]:
    """A ``--model`` value as a URI that holds the artefact, and the registry version it came from (or None).

    Pointer files (``--publish-latest``) are followed once; ``models:/NAME/VERSION`` and
    ``models:/NAME@ALIAS`` (read once, here) resolve to the run folder the version was
    trained into while it still holds that version (on object storage every worker reads
    it there), else to MLflow's copy, downloaded once to a local folder (``cache_root``).
    """
    if not is_registry_uri(uri):
        from jobs.data.storage import resolve_model_uri

        return resolve_model_uri(uri, storage_options), None
    c, tracking_uri = _registry_client(uri, tracking_flag, flag)
    mv = _model_version(c, uri, tracking_uri, flag)
    version = (mv.tags or {}).get(VERSION_TAG)
    if version is None:
        raise InputError(f"{flag} {uri}: version {mv.version} of {mv.name} was not registered by aescore train "
                         "--register (it has no aescore.version tag): not an aescore model")
    info = {"registry_uri": uri, "name": mv.name, "version": str(mv.version), "aescore_version": version}
    original = c.get_run(mv.run_id).data.tags.get(ARTIFACT_URI_TAG) if mv.run_id else None
    if original and loader is not None:
        try:
            if loader(original, storage_options).version == version:
                return original, info
        except Exception:  # noqa: BLE001 - replaced or gone: MLflow's copy serves
            pass
    return _cached_copy(mv, tracking_uri, storage_options, loader), info


def cache_root() -> str:
    """Where registry versions are kept once downloaded: ``AESCORE_CACHE``, else ``~/.cache/aescore``."""
    return os.environ.get("AESCORE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "aescore")


def _cached_copy(mv, tracking_uri: str, storage_options: dict | None, loader: Any) -> str:
    """A local folder with MLflow's copy of a version (versions never change: downloaded once, then reused).

    Two processes may fetch the same version at once: each downloads into a folder of its
    own and renames it into place; a copy already there and whole is kept (another process
    may be reading it), a damaged one replaced.
    """
    import mlflow.artifacts

    final = os.path.join(cache_root(), "registry", quote(mv.name, safe=""), str(mv.version))
    expected = (mv.tags or {}).get(VERSION_TAG)

    def whole() -> bool:
        try:
            return os.path.isdir(final) and (loader is None or loader(final, storage_options).version == expected)
        except Exception:  # noqa: BLE001 - a damaged copy
            return False

    if whole():
        return final
    os.makedirs(os.path.dirname(final), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{mv.version}-", dir=os.path.dirname(final))
    try:
        path = mlflow.artifacts.download_artifacts(artifact_uri=mv.source, dst_path=tmp, tracking_uri=tracking_uri)
        try:
            os.replace(path, final)  # atomic while nothing is there
        except OSError:  # another process's copy (whole: keep it) or a damaged one in the way
            if not whole():
                shutil.rmtree(final)  # only ever a copy this cache made
                os.replace(path, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
