"""Every YAML in cluster/ parses and validates: KubeRay CRDs, core Kubernetes kinds, ray up schema.

The KubeRay v1.7.0 CRDs are read from ../shared/schemas/kuberay/ beside the project root
(never copied here); the core kinds' schemas come from the kubernetes-validate package.
"""

import json
import re
import shlex
import tomllib
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

from jobs.config import parse_config
from jobs.nightly import NightlyConfig
from jobs.score import ScoreConfig
from jobs.train_config import TrainConfig

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
KUBERAY_SCHEMAS = REPO.parent / "shared" / "schemas" / "kuberay"
KUBERNETES_VERSION = "1.31"
ENTRYPOINT_CONFIGS = {"jobs.train": TrainConfig, "jobs.score": ScoreConfig, "jobs.nightly": NightlyConfig}
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
        elif doc["kind"] == "RayCronJob":
            yield name, doc["spec"]["jobTemplate"]


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
    assert {d["kind"] for _, d in docs} >= {"RayJob", "RayCronJob"}
    for name, doc in docs:
        schema = crd_schemas[(doc["kind"], doc["apiVersion"])]
        errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(doc), key=lambda e: list(e.path))
        assert not errors, f"{name}: " + "; ".join(f"{list(e.path)}: {e.message}" for e in errors[:5])


def test_crd_validation_catches_a_broken_manifest(crd_schemas):
    name, doc = next(iter(_kuberay_docs()))
    broken = json.loads(json.dumps(doc))
    (broken["spec"]["jobTemplate"] if doc["kind"] == "RayCronJob" else broken["spec"])["shutdownAfterJobFinishes"] = "yes"
    assert list(jsonschema.Draft7Validator(crd_schemas[(doc["kind"], doc["apiVersion"])]).iter_errors(broken))


def test_core_kinds_validate_against_kubernetes_schemas():
    import kubernetes_validate

    core = [(n, d) for n, d in _docs() if not str(d.get("apiVersion", "")).startswith("ray.io/")
            and "kind" in d and "apiVersion" in d]
    assert {"CronJob", "ServiceAccount", "Role", "RoleBinding", "ConfigMap"} <= {d["kind"] for _, d in core}
    for name, doc in core:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    cron = next(d for _, d in core if d["kind"] == "CronJob")
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"


def test_rayjobs_have_lifecycle_limits_and_a_gpu_worker_group():
    specs = list(_rayjob_specs())
    assert len(specs) >= 4  # train, score, RayCronJob nightly, CronJob's nightly
    for name, spec in specs:
        assert spec["shutdownAfterJobFinishes"] is True, name
        assert spec["ttlSecondsAfterFinished"] > 0 and spec["activeDeadlineSeconds"] > 0, name
        groups = spec["rayClusterSpec"]["workerGroupSpecs"]
        gpu = [g for g in groups if any("nvidia.com/gpu" in c["resources"]["limits"]
                                        for c in g["template"]["spec"]["containers"])]
        assert gpu and gpu[0]["minReplicas"] < gpu[0]["maxReplicas"], name
        yaml.safe_load(spec["runtimeEnvYAML"])


def test_entrypoints_exist_and_accept_their_arguments():
    for name, spec in _rayjob_specs():
        argv = shlex.split(spec["entrypoint"])
        assert argv[:2] == ["python", "-m"], name
        module, args = argv[2], argv[3:]
        assert (REPO / (module.replace(".", "/") + ".py")).is_file(), f"{name}: {module} does not exist"
        cfg = parse_config(ENTRYPOINT_CONFIGS[module], args, prog=module)  # raises on any unknown/invalid flag
        assert cfg is not None


def test_ray_version_everywhere_is_the_pinned_one():
    pinned = _pinned_ray()
    assert ray.__version__ == pinned
    images = []
    for path in YAML_FILES:
        images += re.findall(r"rayproject/ray:([\w.\-]+)", path.read_text())
    assert images and all(tag.split("-")[0] == pinned for tag in images), images
    for name, spec in _rayjob_specs():
        assert spec["rayClusterSpec"]["rayVersion"] == pinned, name


def test_credentials_only_from_kubernetes_secrets():
    secretish = re.compile(r"(KEY|SECRET|TOKEN|PASSWORD|CREDENTIAL)", re.I)
    for name, spec in _rayjob_specs():
        groups = [spec["rayClusterSpec"]["headGroupSpec"], *spec["rayClusterSpec"]["workerGroupSpecs"]]
        for group in groups:
            for c in group["template"]["spec"]["containers"]:
                assert any("secretRef" in e for e in c.get("envFrom", [])), f"{name}: {c['name']} has no secretRef"
                for env in c.get("env", []):
                    assert not (secretish.search(env["name"]) and "value" in env), f"{name}: inline {env['name']}"
        assert not secretish.search(" ".join(yaml.safe_load(spec["runtimeEnvYAML"]).get("env_vars", {})))
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
