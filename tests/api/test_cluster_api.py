"""The FineTuneJob API against the real API server of the local cluster.

What a user sees: examples pass `kubectl apply --dry-run=server`, mistakes
fail there with a message naming the field, a running job's spec cannot be
changed (but suspend and the run policy can), `kubectl get ftj` shows useful
columns and `kubectl explain` documents every field.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from ftj_cases import EXAMPLES, INVALID, Invalid, base_job, example_jobs

from kubetune_api import (
    CheckpointRef,
    CheckpointsStatus,
    Condition,
    FineTuneJobStatus,
    OutputStatus,
    ProgressStatus,
    RestartsStatus,
    TrainingSpec,
    WorkersStatus,
    parse_spec,
    progress_text,
)

pytestmark = pytest.mark.cluster


def _apply_dry_run(cluster: Any, namespace: str, manifest: dict[str, Any], *extra: str) -> Any:
    return cluster.kubectl(
        "create", "--dry-run=server", "-n", namespace, "-o", "json", *extra, "-f", "-",
        input=json.dumps(manifest), check=False,
    )  # fmt: skip


def _integral(value: Any) -> Any:
    """JSON numbers as the API server writes them (1.0 becomes 1)."""
    if isinstance(value, dict):
        return {k: _integral(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_integral(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_is_accepted_by_a_server_side_dry_run(
    cluster: Any, shared_namespace: str, path: Any
) -> None:
    result = cluster.kubectl(
        "apply", "--dry-run=server", "-n", shared_namespace, "-f", str(path), check=False
    )
    assert result.returncode == 0, result.stderr
    assert "created (server dry run)" in result.stdout


@pytest.mark.parametrize("name", sorted(example_jobs()))
def test_server_defaults_are_the_model_defaults(
    cluster: Any, shared_namespace: str, name: str
) -> None:
    job = example_jobs()[name]
    result = _apply_dry_run(cluster, shared_namespace, job)
    assert result.returncode == 0, result.stderr
    stored = json.loads(result.stdout)["spec"]
    assert _integral(stored) == _integral(parse_spec(job["spec"]).to_manifest())
    assert parse_spec(stored) == parse_spec(job["spec"])


@pytest.mark.parametrize("case", INVALID, ids=lambda c: c.id)
def test_invalid_manifest_is_rejected_naming_the_field(
    cluster: Any, shared_namespace: str, case: Invalid
) -> None:
    result = _apply_dry_run(cluster, shared_namespace, case.manifest())
    assert result.returncode != 0, f"accepted: {case.id}"
    assert case.field in result.stderr, result.stderr
    assert case.server_says in result.stderr, result.stderr


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("Support_Bot", "metadata.name"),
        ("9-lives", "metadata.name: Invalid value: must start with a letter"),
        ("a" * 51, "metadata.name: Too long: may not be more than 50"),
    ],
)
def test_job_names_must_be_short_dns_labels(
    cluster: Any, shared_namespace: str, name: str, says: str
) -> None:
    job = base_job()
    job["metadata"]["name"] = name
    result = _apply_dry_run(cluster, shared_namespace, job)
    assert result.returncode != 0
    assert says in result.stderr, result.stderr


def test_unknown_fields_are_pruned_when_not_rejected(cluster: Any, shared_namespace: str) -> None:
    job = base_job()
    job["spec"]["training"]["micro_batch_size"] = 4
    job["spec"]["priority"] = "high"
    # kubectl asks for strict field validation by default: the server says no.
    strict = _apply_dry_run(cluster, shared_namespace, job)
    assert 'unknown field "spec.priority"' in strict.stderr
    # Without field validation the server drops them; they are never kept.
    lenient = _apply_dry_run(cluster, shared_namespace, job, "--validate=false")
    assert lenient.returncode == 0, lenient.stderr
    stored = json.loads(lenient.stdout)["spec"]
    assert "priority" not in stored
    assert "micro_batch_size" not in stored["training"]


def test_free_form_passthrough_is_kept(cluster: Any, shared_namespace: str) -> None:
    job = base_job()
    job["spec"]["deepspeed"]["config"] = {"zero_optimization": {"overlap_comm": True}}
    job["spec"]["volumes"] = [{"name": "shm", "emptyDir": {"medium": "Memory"}}]
    job["spec"]["volumeMounts"] = [{"name": "shm", "mountPath": "/dev/shm"}]
    result = _apply_dry_run(cluster, shared_namespace, job)
    assert result.returncode == 0, result.stderr
    stored = json.loads(result.stdout)["spec"]
    assert stored["deepspeed"]["config"] == {"zero_optimization": {"overlap_comm": True}}
    assert stored["volumes"] == [{"name": "shm", "emptyDir": {"medium": "Memory"}}]


def _create(cluster: Any, namespace: str, job: dict[str, Any]) -> str:
    cluster.kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(job))
    return str(job["metadata"]["name"])


def _patch_status(cluster: Any, namespace: str, name: str, status: dict[str, Any]) -> Any:
    return cluster.kubectl(
        "patch", "ftj", name, "-n", namespace, "--subresource=status", "--type=merge",
        "-p", json.dumps({"status": status}), check=False,
    )  # fmt: skip


def _get(cluster: Any, namespace: str, name: str) -> dict[str, Any]:
    out = cluster.kubectl("get", "ftj", name, "-n", namespace, "-o", "json").stdout
    result: dict[str, Any] = json.loads(out)
    return result


@pytest.fixture(scope="module")
def running_job(cluster: Any, shared_namespace: str) -> Iterator[str]:
    """A job with an image and env, whose status says it is running."""
    job = base_job()
    job["metadata"]["name"] = "running"
    job["spec"]["env"] = [{"name": "NCCL_DEBUG", "value": "WARN"}]
    name = _create(cluster, shared_namespace, job)
    result = _patch_status(cluster, shared_namespace, name, {"phase": "Running"})
    assert result.returncode == 0, result.stderr
    yield name


FORBIDDEN_UPDATES = [
    ("learning-rate", {"training": {"learningRate": 1e-3}}, "spec.training"),
    ("model", {"model": {"uri": "s3://models/other/"}}, "spec.model"),
    ("nodes", {"resources": {"nodes": 4}}, "spec.resources"),
    ("tolerations", {"resources": {"tolerations": []}}, "spec.resources"),
    ("method", {"method": {"type": "full", "lora": None}, "output": {"mergeLora": False}},
     "spec.method"),
    ("dataset", {"dataset": {"train": "s3://datasets/other.jsonl"}}, "spec.dataset"),
    ("image", {"image": "registry.example.com/kubetune/trainer:0.2.0"}, "spec.image"),
    ("remove-image", {"image": None}, "spec.image"),
    ("env", {"env": [{"name": "NCCL_DEBUG", "value": "INFO"}]}, "spec.env"),
    ("add-image-pull-secrets", {"imagePullSecrets": [{"name": "regcred"}]}, "spec.imagePullSecrets"),
    ("checkpoint", {"checkpoint": {"everySteps": 10}}, "spec.checkpoint"),
    ("output", {"output": {"uri": "s3://models/elsewhere/"}}, "spec.output"),
    ("storage", {"storage": {"endpoint": "https://s3.example.com"}}, "spec.storage"),
    ("deepspeed-config", {"deepspeed": {"config": {"steps_per_print": 1}}}, "spec.deepspeed"),
]  # fmt: skip


@pytest.mark.parametrize(("change", "field"), [(p, f) for _, p, f in FORBIDDEN_UPDATES],
                         ids=[i for i, _, _ in FORBIDDEN_UPDATES])  # fmt: skip
def test_a_running_jobs_spec_cannot_change(
    cluster: Any, shared_namespace: str, running_job: str, change: dict[str, Any], field: str
) -> None:
    before = _get(cluster, shared_namespace, running_job)["spec"]
    result = cluster.kubectl(
        "patch", "ftj", running_job, "-n", shared_namespace, "--type=merge",
        "-p", json.dumps({"spec": change}), check=False,
    )  # fmt: skip
    assert result.returncode != 0, f"{field} changed"
    assert f"{field}: Forbidden: is immutable after creation" in result.stderr, result.stderr
    assert _get(cluster, shared_namespace, running_job)["spec"] == before


def test_suspend_and_run_policy_may_change(cluster: Any, namespace: str, ftj_crd: str) -> None:
    name = _create(cluster, namespace, base_job())
    assert _patch_status(cluster, namespace, name, {"phase": "Running"}).returncode == 0
    change = {"spec": {"runPolicy": {"suspend": True, "backoffLimit": 10,
                                     "activeDeadlineSeconds": 3600}}}  # fmt: skip
    cluster.kubectl("patch", "ftj", name, "-n", namespace, "--type=merge", "-p", json.dumps(change))
    cluster.kubectl("label", "ftj", name, "-n", namespace, "team=research", "--overwrite")
    job = _get(cluster, namespace, name)
    policy = parse_spec(job["spec"]).run_policy
    assert (policy.suspend, policy.backoff_limit, policy.active_deadline_seconds) == (
        True,
        10,
        3600,
    )
    assert job["metadata"]["labels"]["team"] == "research"
    cluster.kubectl(
        "patch", "ftj", name, "-n", namespace, "--type=merge",
        "-p", '{"spec": {"runPolicy": {"suspend": false}}}',
    )  # fmt: skip
    assert _get(cluster, namespace, name)["spec"]["runPolicy"]["suspend"] is False


def test_status_written_by_operator_and_trainer_round_trips(
    cluster: Any, namespace: str, ftj_crd: str
) -> None:
    name = _create(cluster, namespace, base_job())
    now = datetime(2026, 11, 21, 12, 0, 0, tzinfo=UTC)
    status = FineTuneJobStatus(
        observed_generation=1,
        phase="Running",
        conditions=[
            Condition(type="Ready", status="True", reason="WorkersRunning",
                      message="2/2 workers ready", last_transition_time=now, observed_generation=1),
            Condition(type="Reconciling", status="False", reason="WorkersRunning",
                      last_transition_time=now),
        ],
        start_time=now,
        workers=WorkersStatus(ready=2, total=2),
        restarts=RestartsStatus(infrastructure=1, application=0),
        progress=ProgressStatus(step=1200, total_steps=3000, epoch=1.2, loss=1.23, eval_loss=1.31,
                                learning_rate=1.5e-4, tokens_per_second=5400.5, eta_seconds=3600,
                                updated_at=now),
        progress_text=progress_text(1200, 3000),
        checkpoints=CheckpointsStatus(
            latest=CheckpointRef(step=1000, uri="s3://checkpoints/support-bot/step-00001000/",
                                 committed_at=now),
            committed=2,
        ),
        output=OutputStatus(uri=None),
        message="training: step 1200 of 3000",
    )  # fmt: skip
    result = _patch_status(cluster, namespace, name, status.to_manifest())
    assert result.returncode == 0, result.stderr
    stored = _get(cluster, namespace, name)["status"]
    assert FineTuneJobStatus.model_validate(stored) == status


@pytest.mark.parametrize(
    ("status", "field"),
    [
        ({"phase": "Exploded"}, "status.phase"),
        ({"restarts": {"application": -1}}, "status.restarts.application"),
        ({"progress": {"step": "many"}}, "status.progress.step"),
        (
            {
                "conditions": [
                    {
                        "type": "Ready",
                        "status": "Maybe",
                        "reason": "X",
                        "message": "",
                        "lastTransitionTime": "2026-11-21T12:00:00Z",
                    }
                ]
            },
            "status.conditions[0].status",
        ),
    ],
)
def test_invalid_status_is_rejected_naming_the_field(
    cluster: Any, shared_namespace: str, running_job: str, status: dict[str, Any], field: str
) -> None:
    result = _patch_status(cluster, shared_namespace, running_job, status)
    assert result.returncode != 0
    assert field in result.stderr, result.stderr


def test_unknown_status_fields_are_not_kept(
    cluster: Any, shared_namespace: str, running_job: str
) -> None:
    # Rejected by strict field validation, or else pruned: never stored.
    _patch_status(cluster, shared_namespace, running_job, {"phase": "Running", "mood": "upbeat"})
    assert "mood" not in _get(cluster, shared_namespace, running_job)["status"]


def test_spec_updates_do_not_touch_status(cluster: Any, namespace: str, ftj_crd: str) -> None:
    name = _create(cluster, namespace, base_job())
    assert _patch_status(cluster, namespace, name, {"phase": "Running"}).returncode == 0
    cluster.kubectl(
        "patch", "ftj", name, "-n", namespace, "--type=merge",
        "-p", '{"status": {"phase": "Failed"}}',
    )  # fmt: skip
    assert _get(cluster, namespace, name)["status"]["phase"] == "Running"


def test_kubectl_get_shows_phase_progress_loss_best_nodes_age(
    cluster: Any, namespace: str, ftj_crd: str
) -> None:
    name = _create(cluster, namespace, base_job())
    status = {
        "phase": "Running",
        "progressText": "1200/3000",
        "progress": {"loss": 1.23},
        "checkpoints": {"latest": {"step": 1000, "uri": "s3://c/step-00001000/"}},
        "evaluation": {"metric": "eval_loss", "best": {"step": 1000, "value": 1.31}},
    }
    assert _patch_status(cluster, namespace, name, status).returncode == 0  # fmt: skip
    table = cluster.kubectl("get", "ftj", "-n", namespace).stdout.splitlines()
    assert table[0].split() == ["NAME", "PHASE", "PROGRESS", "LOSS", "BEST", "NODES", "AGE"]
    assert table[1].split()[:6] == [name, "Running", "1200/3000", "1.23", "1.31", "2"]
    wide = cluster.kubectl("get", "ftj", "-n", namespace, "-o", "wide").stdout.splitlines()
    assert wide[0].split()[7:11] == ["METHOD", "METRIC", "GPUS/NODE", "CHECKPOINT"]
    assert wide[1].split()[7:11] == ["lora", "eval_loss", "8", "1000"]
    by_category = cluster.kubectl("get", "kubetune", "-n", namespace, "-o", "name").stdout
    assert f"finetunejob.kubetune.io/{name}" in by_category
    selected = cluster.kubectl(
        "get", "ftj", "-n", namespace, "--field-selector", "status.phase=Running", "-o", "name"
    ).stdout
    assert name in selected


def test_kubectl_wait_for_succeeded(cluster: Any, namespace: str, ftj_crd: str) -> None:
    name = _create(cluster, namespace, base_job())
    condition = {"type": "Succeeded", "status": "True", "reason": "TrainingComplete",
                 "message": "", "lastTransitionTime": "2026-11-21T12:00:00Z"}  # fmt: skip
    status = {"phase": "Succeeded", "conditions": [condition]}
    assert _patch_status(cluster, namespace, name, status).returncode == 0
    cluster.kubectl(
        "wait", "ftj", name, "-n", namespace, "--for=condition=Succeeded", "--timeout=10s"
    )


def _explain(cluster: Any, field: str) -> str:
    # The OpenAPI document can lag the CRD by a few seconds.
    deadline = time.monotonic() + 60
    while True:
        result = cluster.kubectl("explain", field, check=False)
        if result.returncode == 0 or time.monotonic() > deadline:
            assert result.returncode == 0, result.stderr
            return str(result.stdout)
        time.sleep(1)


def test_kubectl_explain_documents_training(cluster: Any, ftj_crd: str) -> None:
    text = _explain(cluster, "ftj.spec.training")
    for field in TrainingSpec.model_fields.values():
        assert f"  {field.alias}\t<" in text, field.alias
    assert "Sequences per GPU in one forward and backward pass" in text
    assert "Default: 1." in text
    assert "enum: bf16, fp16, fp32" in text


def test_kubectl_explain_documents_the_credentials_secret(cluster: Any, ftj_crd: str) -> None:
    text = _explain(cluster, "ftj.spec.storage.credentialsSecret")
    assert "AWS_ACCESS_KEY_ID" in text and "AWS_SECRET_ACCESS_KEY" in text
