"""Every file in cluster/ is checked as far as this machine allows.

YAML: KubeRay CRDs, core Kubernetes kinds, the ray up schema. The KubeRay v1.7.0 CRDs are
read from ../shared/schemas/kuberay/ beside the project root (never copied here); the core
kinds' schemas come from the kubernetes-validate package. The Dockerfile: hadolint, and its
pinned versions against pyproject.toml and the installed torch. Building and pushing the
image, and applying the manifests to a real cluster, cannot be done here (no registry, no
Kubernetes): cluster/README.md says what was checked on paper.
"""

import json
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

from jobs.runtime.config import parse_config
from jobs.nightly import NightlyConfig
from jobs.score import ScoreConfig
from jobs.training.config import TrainConfig

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
KUBERAY_SCHEMAS = REPO.parent / "shared" / "schemas" / "kuberay"
KUBERNETES_VERSION = "1.31"
ENTRYPOINT_CONFIGS = {"jobs.train": TrainConfig, "jobs.score": ScoreConfig, "jobs.nightly": NightlyConfig}
PROJECT_IMAGE = "example.registry/aescore"
YAML_FILES = sorted(CLUSTER.rglob("*.yaml"))


def _pinned_ray() -> str:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    (pin,) = [d for d in deps if d.startswith("ray[")]
    return pin.split("==")[1]


def _docs() -> list[tuple[str, dict]]:
    out = []
    for path in YAML_FILES:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                out.append((path.relative_to(REPO).as_posix(), doc))
                if doc.get("kind") == "ConfigMap":  # manifests shipped inside ConfigMaps count too
                    for key, text in (doc.get("data") or {}).items():
                        if key.endswith((".yaml", ".yml")):
                            out += [(f"{path.relative_to(REPO)}#{key}", d) for d in yaml.safe_load_all(text) if d]
    return out


def _kuberay_docs():
    return [(name, d) for name, d in _docs() if str(d.get("apiVersion", "")).startswith("ray.io/")]


def _rayjob_specs():
    for name, doc in _kuberay_docs():
        if doc["kind"] == "RayJob":
            yield name, doc["spec"]


def _ray_cluster_specs():
    """Every Ray cluster spec: the RayJobs' clusters and the long-lived RayCluster."""
    for name, doc in _kuberay_docs():
        if doc["kind"] == "RayJob":
            yield name, doc["spec"]["rayClusterSpec"]
        elif doc["kind"] == "RayCluster":
            yield name, doc["spec"]


def _cronjobs():
    return [(n, d) for n, d in _docs() if d.get("kind") == "CronJob"]


def _entrypoints():
    """(file, argv) of every command that runs an aescore job: RayJob entrypoints, and the
    CronJob's ``aescore submit ... -- python -m jobs.nightly ...``."""
    for name, spec in _rayjob_specs():
        yield name, shlex.split(spec["entrypoint"])
    for name, cron in _cronjobs():
        (container,) = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
        cmd = container["command"]
        assert cmd[:2] == ["aescore", "submit"] and "--" in cmd, name
        yield name, cmd[cmd.index("--") + 1:]


def test_every_cluster_yaml_parses():
    assert YAML_FILES, "cluster/ holds no YAML"
    for path in YAML_FILES:
        assert list(yaml.safe_load_all(path.read_text())), path


@pytest.fixture(scope="module")
def crd_schemas():
    if not KUBERAY_SCHEMAS.is_dir():
        pytest.skip(f"KubeRay CRDs not found at {KUBERAY_SCHEMAS} (the shared schemas folder is absent)")
    schemas = {}
    for path in KUBERAY_SCHEMAS.glob("ray.io_*.yaml"):
        crd = yaml.safe_load(path.read_text())
        for version in crd["spec"]["versions"]:
            schemas[(crd["spec"]["names"]["kind"], f"ray.io/{version['name']}")] = version["schema"]["openAPIV3Schema"]
    return schemas


def test_kuberay_manifests_validate_against_the_crds(crd_schemas):
    docs = _kuberay_docs()
    assert {d["kind"] for _, d in docs} >= {"RayJob", "RayCluster"}
    for name, doc in docs:
        schema = crd_schemas[(doc["kind"], doc["apiVersion"])]
        errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(doc), key=lambda e: list(e.path))
        assert not errors, f"{name}: " + "; ".join(f"{list(e.path)}: {e.message}" for e in errors[:5])


def test_crd_validation_catches_a_broken_manifest(crd_schemas):
    name, doc = next((n, d) for n, d in _kuberay_docs() if d["kind"] == "RayJob")
    broken = json.loads(json.dumps(doc))
    broken["spec"]["shutdownAfterJobFinishes"] = "yes"
    assert list(jsonschema.Draft7Validator(crd_schemas[(doc["kind"], doc["apiVersion"])]).iter_errors(broken))


def test_core_kinds_validate_against_kubernetes_schemas():
    import kubernetes_validate

    core = [(n, d) for n, d in _docs() if not str(d.get("apiVersion", "")).startswith("ray.io/")
            and "kind" in d and "apiVersion" in d]
    assert {"CronJob", "ServiceAccount"} <= {d["kind"] for _, d in core}
    for name, doc in core:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_nightly_cronjob_never_overlaps_cleans_up_and_tells_a_drift_alert_from_a_crash():
    ((name, cron),) = _cronjobs()
    spec = cron["spec"]
    assert spec["concurrencyPolicy"] == "Forbid", name
    assert 0 < spec["successfulJobsHistoryLimit"] <= 10 and 0 < spec["failedJobsHistoryLimit"] <= 10, name
    job = spec["jobTemplate"]["spec"]
    assert job["ttlSecondsAfterFinished"] > 0 and job["activeDeadlineSeconds"] > 0 and job["backoffLimit"] == 0
    # Exit code 3 (drift alert, jobs.submit) fails the Job with reason PodFailurePolicy: alertable apart from crashes.
    rules = job["podFailurePolicy"]["rules"]
    assert any(r["action"] == "FailJob" and r["onExitCodes"]["operator"] == "In" and 3 in r["onExitCodes"]["values"]
               for r in rules), name
    assert job["template"]["spec"]["restartPolicy"] == "Never"  # required by podFailurePolicy


def test_the_nightly_scores_the_registry_champion_beside_a_challenger():
    """models:/NAME@champion, a challenger alias and a labelled reference set (promotion's evidence); the MLflow
    credentials come to the Ray head from an optional Secret, never in the command."""
    ((name, argv),) = [(n, a) for n, a in _entrypoints() if a[2] == "jobs.nightly"]
    cfg = parse_config(NightlyConfig, argv[3:], prog="jobs.nightly")
    assert cfg.model.startswith("models:/") and cfg.model.endswith("@champion"), name
    assert cfg.score.challenger.startswith("models:/") and cfg.score.challenger.endswith("@challenger"), name
    assert cfg.score.reference_data and cfg.score.label_column and cfg.tracking_uri.startswith("http"), name
    assert not re.search(r"(PASSWORD|TOKEN|SECRET)", " ".join(argv), re.I), name
    for cluster_name, cluster in _ray_cluster_specs():
        if cluster_name.endswith("raycluster.yaml"):
            (head,) = cluster["headGroupSpec"]["template"]["spec"]["containers"]
            assert {"name": "aescore-mlflow", "optional": True} in [e.get("secretRef") for e in head["envFrom"]]


def test_rayjobs_have_lifecycle_limits_and_clusters_a_gpu_worker_group():
    specs = list(_rayjob_specs())
    assert len(specs) >= 2  # train, score
    for name, spec in specs:
        assert spec["shutdownAfterJobFinishes"] is True, name
        assert spec["ttlSecondsAfterFinished"] > 0 and spec["activeDeadlineSeconds"] > 0, name
    for name, cluster in _ray_cluster_specs():
        groups = cluster["workerGroupSpecs"]
        gpu = [g for g in groups if any("nvidia.com/gpu" in c["resources"]["limits"]
                                        for c in g["template"]["spec"]["containers"])]
        assert gpu and gpu[0]["minReplicas"] < gpu[0]["maxReplicas"], name


def test_nothing_is_installed_at_job_start_and_every_image_is_the_project_image():
    for name, spec in _rayjob_specs():
        env = yaml.safe_load(spec.get("runtimeEnvYAML") or "{}") or {}
        assert not {"pip", "conda", "uv", "working_dir"} & set(env), f"{name}: installs or downloads at job start"
    for path in YAML_FILES:
        text = path.read_text()
        assert "pip install" not in text, path
        for image in re.findall(r"^\s*(?:-\s*)?image:\s*(\S+)", text, re.M):
            assert image.startswith(PROJECT_IMAGE + ":"), f"{path}: {image} is not the project image"
    for path in (CLUSTER / "ray-up").glob("*.yaml"):
        cfg = yaml.safe_load(path.read_text())
        assert cfg["docker"]["image"].startswith(PROJECT_IMAGE + ":") and not cfg.get("setup_commands"), path


def test_entrypoints_exist_and_accept_their_arguments():
    seen = set()
    for name, argv in _entrypoints():
        assert argv[:2] == ["python", "-m"], name
        module, args = argv[2], argv[3:]
        assert (REPO / (module.replace(".", "/") + ".py")).is_file(), f"{name}: {module} does not exist"
        cfg = parse_config(ENTRYPOINT_CONFIGS[module], args, prog=module)  # raises on any unknown/invalid flag
        assert cfg is not None
        seen.add(module)
    assert seen == set(ENTRYPOINT_CONFIGS)


def _dockerfile_args() -> dict[str, str]:
    return dict(re.findall(r"^ARG (\w+)=(\S*)", (CLUSTER / "Dockerfile").read_text(), re.M))


def test_ray_version_everywhere_is_the_pinned_one():
    pinned = _pinned_ray()
    assert ray.__version__ == pinned
    args = _dockerfile_args()
    assert args["RAY_VERSION"] == pinned
    assert re.search(r"^FROM rayproject/ray:\$\{RAY_VERSION\}-py311\$\{VARIANT\}$", (CLUSTER / "Dockerfile").read_text(), re.M)
    for name, cluster in _ray_cluster_specs():
        assert cluster["rayVersion"] == pinned, name


def test_dockerfile_pins_the_tested_torch_and_passes_hadolint():
    import torch

    args = _dockerfile_args()
    assert args["TORCH_VERSION"] == torch.__version__.split("+")[0]  # the build the tests ran with
    assert args["TORCH_INDEX"].endswith("/whl/cpu")  # CPU image by default; GPU builds pass a CUDA index
    lint = shutil.which("hadolint") or str(Path(__import__("sys").executable).with_name("hadolint"))
    out = subprocess.run([lint, "--failure-threshold", "info", str(CLUSTER / "Dockerfile")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_lint_catches_a_bad_dockerfile(tmp_path):
    lint = shutil.which("hadolint") or str(Path(__import__("sys").executable).with_name("hadolint"))
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM rayproject/ray:latest\nRUN cd /tmp && pip install torch\n")
    out = subprocess.run([lint, str(bad)], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "DL3007" in out.stdout  # "latest" tag


def test_credentials_from_the_pod_identity_or_an_optional_secret():
    secretish = re.compile(r"(KEY|SECRET|TOKEN|PASSWORD|CREDENTIAL)", re.I)
    for name, cluster in _ray_cluster_specs():
        for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
            pod = group["template"]["spec"]
            assert pod.get("serviceAccountName") == "aescore", f"{name}: a pod touching storage without the identity"
            for c in pod["containers"]:
                refs = [e["secretRef"] for e in c.get("envFrom", []) if "secretRef" in e]
                assert refs and all(r.get("optional") is True for r in refs), f"{name}: {c['name']}"
                for env in c.get("env", []):
                    assert not (secretish.search(env["name"]) and "value" in env), f"{name}: inline {env['name']}"
    for name, spec in _rayjob_specs():
        assert not secretish.search(" ".join((yaml.safe_load(spec.get("runtimeEnvYAML") or "{}") or {})
                                             .get("env_vars", {})))
    accounts = [d for _, d in _docs() if d.get("kind") == "ServiceAccount"]
    assert [a["metadata"]["name"] for a in accounts] == ["aescore"]
    for _, doc in _docs():
        assert doc.get("kind") != "Secret", "no Secret manifests with values in the repository"


def test_ray_up_configs_validate_against_rays_schema():
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    configs = [p for p in YAML_FILES if p.parent.name == "ray-up"]
    assert {p.name for p in configs} == {"aws.yaml", "gcp.yaml"}
    for path in configs:
        cfg = yaml.safe_load(path.read_text())
        jsonschema.validate(cfg, schema)
        gpu = cfg["available_node_types"]["gpu_worker"]
        assert gpu["min_workers"] < gpu["max_workers"], path
        assert any("--dashboard-host=127.0.0.1" in c for c in cfg["head_start_ray_commands"]), path


def test_runtime_env_file_keeps_the_upload_small():
    env = yaml.safe_load((CLUSTER / "runtime_env.yaml").read_text())
    assert set(env) <= {"excludes", "pip", "env_vars", "working_dir", "py_modules"}
    assert {".venv/", ".git/"} <= set(env["excludes"])
