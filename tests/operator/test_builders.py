"""Golden manifests: exactly what the operator creates for a table of specs.

Each case builds a job's children (`build_children`) and every worker pod
(`build_worker_pod`, one per rank) and compares them, as one multi-document
YAML file, with the committed file `tests/operator/testdata/<case>.yaml`. A
change to what the operator creates therefore shows up as a diff in review,
and a failing test prints that diff.

After an intended change, regenerate the files and read the diff before
committing it:

    KUBETUNE_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/operator/test_builders.py

Specs come from the test builder `ftj()` (tests/harness.py) and from every
FineTuneJob in examples/*.yaml. The builders are pure and the YAML is
rendered deterministically, so the files change only when a builder or a spec
does.
"""

from __future__ import annotations

import difflib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from harness import ftj

from kubetune_api import Manifest, parse_job
from kubetune_api.constants import CONFIG_ANNOTATION
from kubetune_operator.children import (
    CONFIG_FILE,
    CONFIG_MOUNT,
    WORKER_SERVICE_ACCOUNT,
    JobRef,
    build_children,
    namespace_identity,
    trainer_job,
)
from kubetune_operator.workers import build_preflight_pod, build_worker_pod
from kubetune_testbed import REPO
from kubetune_testbed.nodeagent.podspec import PodContext, volume_files

TESTDATA = Path(__file__).parent / "testdata"
UPDATE = os.environ.get("KUBETUNE_UPDATE_GOLDEN") == "1"
REGENERATE = "KUBETUNE_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/operator/test_builders.py"
NAMESPACE = "ml"
UID = "0b5a6f1e-7c4d-4e8a-9f00-000000000001"


@dataclass(frozen=True)
class Case:
    name: str  # the golden file's name, without .yaml
    job: Manifest  # a FineTuneJob manifest
    attempt: int = 1


def _examples() -> list[Case]:
    cases = []
    for path in sorted((REPO / "examples").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "FineTuneJob":
                cases.append(Case(f"example-{path.stem}", doc))
    return cases


CASES = [
    # 2 nodes x 8 GPUs of kwok's fake nodes (tolerations, nodeSelector), full fine-tuning,
    # spec.image, S3 with an endpoint and a credentials Secret.
    Case("gpu-full", ftj("gpu-full")),
    Case("gpu-lora", ftj("gpu-lora", method={"type": "lora", "lora": {"r": 8, "alpha": 16}})),
    # No GPUs: one process per node and no nvidia.com/gpu; no spec.image: the default image;
    # the Secret's keys without an endpoint (the Secret may name one).
    Case("cpu-only-default-image", ftj("cpu-only", nodes=1, gpus=0, image="",
                                       storage={"endpoint": "", "region": "eu-west-1"})),
    # Every location a pvc:// URI; two of them on one claim, which is mounted once.
    Case("pvc-everywhere", ftj(
        "pvc-job",
        model={"uri": "pvc://models/base/llama-3.2-1b/"},
        dataset={"train": "pvc://datasets/chat/train.jsonl", "eval": "pvc://datasets/chat/eval.jsonl"},
        checkpoint={"uri": "pvc://checkpoints/pvc-job/"},
        output={"uri": "pvc://models/pvc-job/"},
        storage={"endpoint": "", "credentialsSecret": ""},
    )),
    # Where the workers may run, on a gang restarted twice (attempt 3); the user's pod labels and
    # annotations beside the operator's.
    Case("scheduling-attempt-3", ftj(
        "scheduled", nodes=3, gpus=4,
        podMetadata={"labels": {"team": "nlp", "example.com/cost-centre": "cc-42"},
                     "annotations": {"sidecar.istio.io/inject": "false"}},
        resources={
            "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{
                "topologyKey": "kubernetes.io/hostname",
                "labelSelector": {"matchLabels": {"kubetune.io/job-name": "scheduled"}}}]}},
            "priorityClassName": "training-high",
            "schedulerName": "kueue-scheduler",
            "requests": {"cpu": "16", "memory": "128Gi"},
            "limits": {"memory": "160Gi"},
        },
    ), attempt=3),
    # The user's environment, registry credentials and volumes.
    Case("env-secrets-volumes", ftj(
        "env-job", nodes=1, gpus=1,
        image="registry.example.com/private/trainer:1.2.3",
        imagePullPolicy="Always",
        imagePullSecrets=[{"name": "registry-credentials"}],
        env=[
            {"name": "NCCL_DEBUG", "value": "INFO"},
            {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "huggingface", "key": "token"}}},
            {"name": "WANDB_PROJECT", "valueFrom": {"configMapKeyRef": {"name": "tracking", "key": "project"}}},
        ],
        envFrom=[
            {"secretRef": {"name": "extra-secrets"}},
            {"configMapRef": {"name": "extra-settings", "optional": True}, "prefix": "EXTRA_"},
        ],
        volumes=[{"name": "cache", "emptyDir": {"sizeLimit": "10Gi"}}],
        volumeMounts=[{"name": "cache", "mountPath": "/cache"}],
    )),
    # Neither a Secret nor an endpoint: the pods' ambient credentials (e.g. IRSA).
    Case("ambient-credentials", ftj("ambient", nodes=1, storage={"endpoint": "", "credentialsSecret": "",
                                                                 "region": "us-west-2"})),
    *_examples(),
]


class _Dumper(yaml.SafeDumper):
    """Block style for text of several lines, so diffs show lines."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def build(case: Case) -> list[Manifest]:
    """Everything the operator creates for the job: its preflight pod (when spec.preflight is on), its
    children, then one worker per rank (reading the preflight's cache)."""
    job = parse_job(case.job)
    assert job.metadata.name
    ref = JobRef(name=job.metadata.name, namespace=NAMESPACE, uid=UID)
    preflight = [build_preflight_pod(ref, job.spec)] if job.spec.preflight.enabled else []
    key = "3f2a9c0d" if preflight else None
    workers = [build_worker_pod(ref, job.spec, rank, case.attempt, data_cache_key=key)
               for rank in range(job.spec.resources.nodes)]
    return [*preflight, *build_children(ref), *workers]


def render(case: Case, manifests: list[Manifest]) -> str:
    header = (f"# Golden manifests of case {case.name!r} in tests/operator/test_builders.py.\n"
              f"# Generated; regenerate with: {REGENERATE}\n")
    body = yaml.dump_all(manifests, Dumper=_Dumper, sort_keys=False, default_flow_style=False,
                         explicit_start=True, allow_unicode=True, width=100)
    return header + body


def test_cases_have_distinct_names() -> None:
    names = [c.name for c in CASES]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_builders_match_golden_manifests(case: Case) -> None:
    manifests = build(case)
    text = render(case, manifests)
    assert list(yaml.safe_load_all(text)) == manifests, "the YAML must read back as exactly what was built"
    path = TESTDATA / f"{case.name}.yaml"
    if UPDATE:
        TESTDATA.mkdir(exist_ok=True)
        path.write_text(text)
        return
    assert path.exists(), f"no golden file {path.relative_to(REPO)}; create it with: {REGENERATE}"
    expected = path.read_text()
    if text != expected:
        diff = "".join(difflib.unified_diff(expected.splitlines(keepends=True), text.splitlines(keepends=True),
                                            fromfile=f"{path.relative_to(REPO)} (golden)",
                                            tofile=f"{case.name} (built now)"))
        pytest.fail(f"the builders' output for {case.name!r} differs from its golden file "
                    f"(if that is intended, regenerate: {REGENERATE}):\n{diff}", pytrace=False)


def test_no_golden_file_without_a_case() -> None:
    stale = sorted({p.stem for p in TESTDATA.glob("*.yaml")} - {c.name for c in CASES})
    if UPDATE:
        for name in stale:
            (TESTDATA / f"{name}.yaml").unlink()
        return
    assert not stale, f"golden files of no case (delete them, or regenerate: {REGENERATE}): {stale}"


def test_the_table_covers_what_the_builders_branch_on() -> None:
    """The cases between them exercise every optional part of a worker pod."""
    pods: list[dict[str, Any]] = [m for c in CASES for m in build(c) if m["kind"] == "Pod"]
    pod_specs = [p["spec"] for p in pods]
    containers = [s["containers"][0] for s in pod_specs]
    for key in ("nodeSelector", "tolerations", "affinity", "priorityClassName", "schedulerName",
                "imagePullSecrets"):
        assert any(key in s for s in pod_specs), key
    assert any("envFrom" in c for c in containers)
    assert any("annotations" in p["metadata"] and "team" in p["metadata"]["labels"] for p in pods)
    assert any("nvidia.com/gpu" in c["resources"].get("limits", {}) for c in containers)
    assert any("nvidia.com/gpu" not in c["resources"].get("limits", {}) for c in containers)
    assert any(v.get("persistentVolumeClaim") for s in pod_specs for v in s["volumes"])
    env_names = [{e["name"] for e in c["env"]} for c in containers]
    assert any("AWS_ACCESS_KEY_ID" in names and "AWS_ENDPOINT_URL" in names for names in env_names)
    assert any("AWS_ACCESS_KEY_ID" not in names for names in env_names)


def test_every_worker_carries_the_trainer_config_that_its_config_volume_makes_a_file() -> None:
    """The trainer's config.json is the pod's own annotation, through a downward-API volume: no object
    of its own (a ConfigMap would cost one more create per job)."""
    case = next(c for c in CASES if c.name == "scheduling-attempt-3")  # 3 ranks; the user's annotations too
    job = parse_job(case.job)
    ref = JobRef(name="scheduled", namespace=NAMESPACE, uid=UID)
    built = build(case)
    assert [m["kind"] for m in built if m["kind"] != "Pod"] == ["Service"]  # the pods' identity is the namespace's
    pods = [m for m in built if m["kind"] == "Pod"]
    for pod in pods:
        annotations = pod["metadata"]["annotations"]
        assert annotations["sidecar.istio.io/inject"] == "false"  # the user's, beside the operator's
        text = annotations[CONFIG_ANNOTATION]
        # Compact, keys sorted: the same bytes for the same spec.
        assert text == json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"))
        # What the trainer reads back (its jobfile parses with parse_job): this job and its spec.
        config = json.loads(text)
        assert config == trainer_job(ref, job.spec).to_manifest()
        read = parse_job(config)
        assert (read.metadata.name, read.metadata.namespace, read.metadata.uid) == ("scheduled", NAMESPACE, UID)
        assert read.spec == job.spec

        # The file a kubelet writes from the "config" volume (the test bed's node agent does as a kubelet),
        # at the path the trainer is told.
        pod_ctx = PodContext(pod, pod_ip="10.244.0.2", host_ip="10.244.0.1", node_name="gpu-0")
        volume = next(v for v in pod["spec"]["volumes"] if v["name"] == "config")
        assert set(volume) == {"name", "downwardAPI"}
        files = volume_files(pod_ctx, volume, configmaps=lambda ns, name: None, secrets=lambda ns, name: None,
                             token=lambda audience, seconds: "")
        assert files == {CONFIG_FILE: (text.encode(), 0o644)}
        container = pod["spec"]["containers"][0]
        assert {"name": "config", "mountPath": CONFIG_MOUNT, "readOnly": True} in container["volumeMounts"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["KUBETUNE_CONFIG"] == f"{CONFIG_MOUNT}/{CONFIG_FILE}"
    # One gang, one config: every rank carries the same bytes.
    assert len({p["metadata"]["annotations"][CONFIG_ANNOTATION] for p in pods}) == 1 and len(pods) == 3


@pytest.mark.parametrize(("resources", "env_value", "expected"), [
    # The pod's CPU shared by its training processes (one per GPU), at least one each.
    ({"gpusPerNode": 4, "requests": {"cpu": "16"}}, None, "4"),
    ({"gpusPerNode": 1, "requests": {"cpu": "500m"}}, None, "1"),
    ({"gpusPerNode": 8, "requests": {"cpu": "4"}}, None, "1"),
    # The limit, where there is one, over the request.
    ({"gpusPerNode": 2, "requests": {"cpu": "2"}, "limits": {"cpu": "9"}}, None, "4"),
    ({"gpusPerNode": 0, "requests": {"cpu": 3}}, None, "3"),
    # No CPU named: torchrun's default stands (the variable is not set).
    ({"gpusPerNode": 1, "requests": {"memory": "8Gi"}}, None, None),
    # The user's own setting wins: spec.env comes after the operator's variables.
    ({"gpusPerNode": 1, "requests": {"cpu": "8"}}, "6", "6"),
])
def test_training_processes_get_the_threads_of_the_pods_cpu(resources: dict[str, Any], env_value: str | None,
                                                            expected: str | None) -> None:
    """OMP_NUM_THREADS follows the CPU the pod asks for, so processes sharing cores do not oversubscribe them."""
    extra = {"env": [{"name": "OMP_NUM_THREADS", "value": env_value}]} if env_value else {}
    job = parse_job(ftj("threads", nodes=1, resources=resources, **extra))
    pod = build_worker_pod(JobRef(name="threads", namespace=NAMESPACE, uid=UID), job.spec, 0, 1)
    env = pod["spec"]["containers"][0]["env"]
    values = [e["value"] for e in env if e["name"] == "OMP_NUM_THREADS"]
    # A kubelet takes the last of repeated names.
    assert (values[-1] if values else None) == expected


def test_the_workers_identity_belongs_to_the_namespace_and_may_only_write_job_status() -> None:
    ref = JobRef(name="any", namespace=NAMESPACE, uid=UID)
    sa, role, binding = namespace_identity(NAMESPACE)
    assert [m["kind"] for m in (sa, role, binding)] == ["ServiceAccount", "Role", "RoleBinding"]
    # Not owned by a job: deleting the namespace's first job must not take the identity of the others.
    assert not any("ownerReferences" in m["metadata"] for m in (sa, role, binding))
    assert sa["metadata"]["name"] == ref.service_account_name == WORKER_SERVICE_ACCOUNT
    assert role["rules"] == [{"apiGroups": ["kubetune.io"], "resources": ["finetunejobs/status"],
                              "verbs": ["get", "patch"]}]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": WORKER_SERVICE_ACCOUNT, "namespace": NAMESPACE}]
    # The admission policy that narrows the Role to the pod's own job names the same account and pod names
    # (tests/operator/test_operator_kwok.py proves it at the API server).
    policy, policy_binding = yaml.safe_load_all((REPO / "charts/kubetune/files/worker-status-policy.yaml").read_text())
    assert f"':{WORKER_SERVICE_ACCOUNT}'" in policy["spec"]["matchConditions"][0]["expression"]
    check = policy["spec"]["validations"][0]["expression"]
    suffix = ref.worker_name(0).removeprefix(ref.name)[:-1]  # "-worker-"
    assert f"'{suffix}'" in check and f"size(object.metadata.name) + {len(suffix)}" in check
    assert policy_binding["spec"] == {"policyName": policy["metadata"]["name"], "validationActions": ["Deny"]}
