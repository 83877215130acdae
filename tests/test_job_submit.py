"""`ray job submit` for real, on a two-node Ray cluster: train with one Train worker per node, then score, on S3.

A head and a worker node run as separate ``ray start`` processes on 127.0.0.1, each with one
CPU and one unit of the custom resource ``aescore_slot``; training asks each of its two
workers for one ``aescore_slot``, so Ray must place them on different nodes. Every path is
on the local S3 server. Both nodes are started with their own temp dir and ports and
stopped by the PIDs of their own processes only (``ray stop`` would also stop every other
Ray on the machine).
"""

import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import psutil
import pytest
import s3fs

from aemodel.commit import read_committed_json
from jobs.data.synthetic import LABEL, ROW_ID, write_shards
from tests.conftest import free_port

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.e2e, pytest.mark.submit, pytest.mark.timeout(900)]


def _ray_cli() -> str:
    return str(Path(sys.executable).with_name("ray"))


def _ports() -> list[str]:
    return [f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}",
            f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}",
            "--resources={\"aescore_slot\": 1}", "--num-cpus=1", "--disable-usage-stats"]


@pytest.fixture(scope="module")
def ray_head(s3_server):
    """A head and a worker node on 127.0.0.1, each in a short temp dir of its own; yields (dashboard address, env)."""
    env = {**os.environ, **s3_server["env"], "RAY_AUTH_MODE": "disabled",
           "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    env.pop("RAY_ADDRESS", None)
    errors = []
    for _ in range(2):  # a second try on fresh ports; both failures are reported with Ray's own words
        temp_dir = tempfile.mkdtemp(prefix="aesray-", dir="/tmp")  # short: Ray's socket paths are length-limited
        try:
            dash = _start_cluster(temp_dir, env)
        except RuntimeError as e:
            errors.append(str(e))
            _stop_processes_under(temp_dir)
            continue
        try:
            yield f"http://127.0.0.1:{dash}", env
        finally:
            _stop_processes_under(temp_dir)
        return
    pytest.fail("\n\n".join(errors))


def _start_cluster(temp_dir: str, env: dict) -> int:
    """Start the head and the worker node; returns the dashboard port, or raises with what ``ray start`` said.

    Each node has a temp dir of its own (``temp_dir`` and ``temp_dir-worker``), as on machines
    of their own: nodes sharing one would unpack a job's working_dir into the same folder,
    and one node's unpacking removes the files under the driver that runs on the other.
    """
    os.makedirs(f"{temp_dir}-worker")
    dash, gcs = free_port(), free_port()
    head = [_ray_cli(), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={gcs}",
            "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", f"--temp-dir={temp_dir}",
            f"--ray-client-server-port={free_port()}", *_ports()]
    worker = [_ray_cli(), "start", f"--address=127.0.0.1:{gcs}", "--node-ip-address=127.0.0.1",
              f"--temp-dir={temp_dir}-worker", *_ports()]
    for cmd in (head, worker):
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
        if out.returncode:
            raise RuntimeError(f"{' '.join(cmd)} exited {out.returncode}:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return dash


def _stop_processes_under(temp_dir: str) -> None:
    """Terminate the processes of the cluster in ``temp_dir`` (and ``temp_dir-worker``; and their children) by PID."""
    mine = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(temp_dir in part for part in (p.info["cmdline"] or [])):
                mine.append(p)
                mine.extend(p.children(recursive=True))
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    for p in mine:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(mine, timeout=15)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


def _submit(address: str, env: dict, entrypoint: list[str]) -> subprocess.CompletedProcess:
    sid = f"aescore-test-{uuid.uuid4().hex[:8]}"
    cmd = [_ray_cli(), "job", "submit", "--address", address, "--submission-id", sid, "--working-dir", ".",
           "--runtime-env", "cluster/runtime_env.yaml", "--", *entrypoint]
    out = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    status = subprocess.run([_ray_cli(), "job", "status", "--address", address, sid], env=env,
                            capture_output=True, text=True, timeout=60)
    out.status = status.stdout  # type: ignore[attr-defined]
    return out


def test_train_on_two_nodes_then_score_via_ray_job_submit(ray_head, mixed_data, bucket, s3_server, tmp_path):
    from ray.util.state import list_actors, list_nodes

    address, env = ray_head
    assert len([n for n in list_nodes(address=address) if n.state == "ALIVE"]) == 2
    write_shards(mixed_data["train_table"], f"{bucket}/train", 2)
    write_shards(mixed_data["score_table"], f"{bucket}/score", 2)

    train = _submit(address, env, ["python", "-m", "jobs.train", "--data", f"{bucket}/train",
                                   "--out", f"{bucket}/model", "--exclude-columns", f"{ROW_ID},{LABEL}",
                                   "--epochs", "4", "--num-workers", "2", "--cpus-per-worker", "0.5",
                                   "--worker-resources", "aescore_slot=1", "--storage-path", f"{bucket}/ray"])
    assert train.returncode == 0, train.stdout[-3000:] + train.stderr[-3000:]
    assert "succeeded" in train.status.lower()
    assert "trained s3://" in train.stdout
    workers = list_actors(address=address, filters=[("class_name", "=", "RayTrainWorker")], detail=True)
    assert len(workers) == 2 and len({w.node_id for w in workers}) == 2  # one Train worker per node

    score = _submit(address, env, ["python", "-m", "jobs.score", "--model", f"{bucket}/model",
                                   "--data", f"{bucket}/score", "--out", f"{bucket}/scores",
                                   "--id-columns", ROW_ID])
    assert score.returncode == 0, score.stdout[-3000:] + score.stderr[-3000:]
    assert "succeeded" in score.status.lower()

    fs = s3fs.S3FileSystem()
    fs.invalidate_cache()
    assert fs.exists(f"{bucket}/scores/_SUCCESS")
    manifest = read_committed_json(f"{bucket}/scores", "manifest.json")
    assert manifest["row_count"] == mixed_data["score_table"].num_rows
    assert s3_server["secret"] not in train.stdout + train.stderr + score.stdout + score.stderr

    # A local --out on two nodes would leave half the row files on the other node: refused, nothing written.
    local = _submit(address, env, ["python", "-m", "jobs.score", "--model", f"{bucket}/model",
                                   "--data", f"{bucket}/score", "--out", str(tmp_path / "scores")])
    assert local.returncode != 0
    assert "is a node-local path, but the Ray cluster has 2 nodes" in local.stdout + local.stderr
    assert not list((tmp_path / "scores").glob("runs/*/rows/*")) and not (tmp_path / "scores" / "_SUCCESS").exists()


def test_failing_job_exits_nonzero_with_the_error(ray_head, bucket):
    address, env = ray_head
    out = _submit(address, env, ["python", "-m", "jobs.score", "--model", f"{bucket}/missing-model",
                                 "--data", f"{bucket}/x", "--out", f"{bucket}/o"])
    assert out.returncode != 0
    assert "failed" in out.status.lower()
    assert "error: no complete model artefact" in out.stdout + out.stderr


@pytest.mark.parametrize("code", [0, 3, 1])
def test_aescore_submit_returns_the_jobs_exit_code(ray_head, code):
    """A scheduler running ``aescore submit`` sees 3 for a drift alert and 1 for a crash (ray job submit: 1 for both)."""
    address, env = ray_head
    out = subprocess.run([sys.executable, "-m", "jobs.submit", "--address", address, "--",
                          "python", "-c", f"import sys; print('ran'); sys.exit({code})"],
                         env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == code, out.stdout[-2000:] + out.stderr[-2000:]
    assert "ran" in out.stdout
    if code == 3:
        assert "drift alert (exit code 3)" in out.stderr


def test_a_model_bank_trains_on_both_nodes_and_scores_there(ray_head, bucket, s3_server):
    """The entity models' tasks run on both nodes; scoring on the cluster routes rows to them."""
    from ray.util.state import list_tasks

    from aemodel import read_scores
    from jobs.data.synthetic import ENTITY, KIND, make_entity_table

    address, env = ray_head
    write_shards(make_entity_table(8, 250, seed=4, anomaly_fraction=0.0), f"{bucket}/train", 2)
    write_shards(make_entity_table(9, 40, seed=4, anomaly_fraction=0.05, sample=1), f"{bucket}/score", 2)
    train = _submit(address, env, ["python", "-m", "jobs.train", "--data", f"{bucket}/train", "--out",
                                   f"{bucket}/bank", "--exclude-columns", f"{ROW_ID},{LABEL},{KIND}",
                                   "--entity-columns", ENTITY, "--min-entity-rows", "200", "--epochs", "5",
                                   "--cpus-per-worker", "0.5", "--storage-path", f"{bucket}/ray"])
    assert train.returncode == 0, train.stdout[-3000:] + train.stderr[-3000:]
    assert "bank: 8 entity models of 8 entities" in train.stdout
    tasks = list_tasks(address=address, filters=[("func_or_class_name", "=", "fit_entities")], detail=True)
    assert len({t.node_id for t in tasks}) == 2  # many small models per task, on both nodes

    score = _submit(address, env, ["python", "-m", "jobs.score", "--model", f"{bucket}/bank", "--data",
                                   f"{bucket}/score", "--out", f"{bucket}/bank-scores", "--id-columns", ROW_ID])
    assert score.returncode == 0, score.stdout[-3000:] + score.stderr[-3000:]
    rows = read_scores(f"{bucket}/bank-scores")
    assert len(rows) == 9 * 40
    assert (rows["model_scope"] == "global").sum() == 40 and set(rows.loc[rows[ENTITY] == "e00008", "model_scope"]) \
        == {"global"}
