"""Provenance for manifests: library versions, git commit, input fingerprints, run ids."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
from importlib import metadata

_LIBRARIES = ("aescore", "ray", "torch", "pyarrow", "pandas", "numpy", "fsspec", "s3fs", "safetensors")


def library_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in _LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_commit() -> str | None:
    """``AESCORE_GIT_COMMIT`` if set, else the commit of the working directory, if it is a git checkout."""
    if os.environ.get("AESCORE_GIT_COMMIT"):
        return os.environ["AESCORE_GIT_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def fingerprint(parts: object) -> str:
    """A short, stable hash of JSON-able ``parts``."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]
