"""A real MLflow tracking server for the tests: its own venv, SQLite backend, local artefact root, 127.0.0.1.

The server runs from its own venv (made on first use, by ``server_python``), outside the
checkout (``AESCORE_MLFLOW_SERVER_VENV``, else the system's temporary folder): the full
``mlflow`` package pins pyarrow below the version aescore runs with, while the client
aescore uses (``mlflow-skinny``, in the test extra) pins nothing of the kind. On a real
deployment the server is a separate machine in any case.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

SERVER_PACKAGE = "mlflow==3.17.2"
"""The tracking server's version (the client is mlflow-skinny of the same major version)."""
VENV = Path(os.environ.get("AESCORE_MLFLOW_SERVER_VENV")
            or Path(tempfile.gettempdir()) / f"aescore-{SERVER_PACKAGE.replace('==', '-')}-server")


def server_python() -> Path:
    """The server venv's python, installing ``SERVER_PACKAGE`` there first if needed."""
    python, marker = VENV / "bin" / "python", VENV / ".aescore-installed"
    if not (marker.exists() and marker.read_text() == SERVER_PACKAGE):
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", SERVER_PACKAGE], check=True)
        marker.write_text(SERVER_PACKAGE)
    return python


def start(root: Path, port: int) -> tuple[subprocess.Popen, str]:
    """``mlflow server`` on 127.0.0.1:``port`` with its database and artefacts under ``root``; (process, URI)."""
    root.mkdir(parents=True, exist_ok=True)
    log = open(root / "server.log", "wb")  # noqa: SIM115 - closed with the process, in stop()
    proc = subprocess.Popen(
        [str(server_python()), "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination", str(root / "artifacts"),
         "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # its workers share the group we stop
    proc.log = log  # type: ignore[attr-defined]
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited {proc.returncode}: {(root / 'server.log').read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
                if r.status == 200:
                    return proc, uri
        except OSError:
            time.sleep(0.5)
    stop(proc)
    raise RuntimeError(f"mlflow server did not answer in 180 s: {(root / 'server.log').read_text()[-2000:]}")


def stop(proc: subprocess.Popen) -> None:
    """Stop the server this module started (its process group, by its PID)."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.log.close()  # type: ignore[attr-defined]
