"""Fixtures for the trainer tests: offline models, toy and real datasets, and a launcher
that runs the trainer as users do (torchrun, a config file) and returns its JSON log lines."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kubetune_testbed import REPO
from kubetune_testbed.models import ensure_smollm2, ensure_tiny
from kubetune_testbed.ports import free_port
from kubetune_testbed.s3folders import keys
from kubetune_trainer.logs import parse_log_lines

PYTHON = Path(sys.executable)
TORCHRUN = PYTHON.parent / "torchrun"

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no hub access on test machines
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    """A tiny random Llama (2 layers, hidden 64) with the SmolLM2 tokenizer."""
    return Path(ensure_tiny())


@pytest.fixture(scope="session")
def tiny_bert_dir() -> Path:
    """A tiny random BERT encoder (4 layers, hidden 32) with the MiniLM tokenizer, no head."""
    from kubetune_testbed.models import ensure_tiny_bert

    return Path(ensure_tiny_bert())


@pytest.fixture(scope="session")
def tiny_resnet_dir() -> Path:
    """A small random ResNet with an image processor for 32 x 32 images, no head."""
    from kubetune_testbed.models import ensure_tiny_resnet

    return Path(ensure_tiny_resnet())


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct as a plain HF directory (converted from the shipped GGUF once)."""
    return Path(ensure_smollm2())


@pytest.fixture(scope="session")
def tokenizer(tiny_model_dir: Path) -> Any:
    from kubetune_trainer.modeling import load_tokenizer

    return load_tokenizer(str(tiny_model_dir))


def write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="session")
def chat_corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(train, eval) chat JSONL from chatterbot-corpus English Q/A pairs; eval pairs are held out."""
    from kubetune_testbed.datasets import write_chat_dataset

    return write_chat_dataset(tmp_path_factory.mktemp("chatterbot"), held_out=16)


def trainer_env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


@dataclass
class Run:
    """A finished trainer run: exit codes and the rank-0 JSON events."""

    returncodes: list[int]
    output: str
    events: list[dict[str, Any]]

    def of(self, event: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == event]

    def losses(self) -> dict[int, float]:
        return {e["step"]: e["loss"] for e in self.of("step")}


class Launched:
    """Processes started together (e.g. one torchrun per node), their output going to files."""

    def __init__(self, commands: Sequence[Sequence[str]], envs: Sequence[dict[str, str]] | None = None,
                 logs: Path | None = None) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="trainer-run-", dir=logs))
        self.logs = [self.folder / f"process-{i}.log" for i in range(len(commands))]
        self.procs = []
        for i, command in enumerate(commands):
            env = {**trainer_env(), **(envs[i] if envs else {})}
            with self.logs[i].open("w") as out:
                self.procs.append(subprocess.Popen(list(command), stdout=out, stderr=subprocess.STDOUT,
                                                   text=True, env=env, cwd=REPO, start_new_session=True))

    def output(self) -> str:
        return "\n".join(log.read_text(errors="replace") for log in self.logs)

    def events(self) -> list[dict[str, Any]]:
        return parse_log_lines(self.output())

    def wait(self, timeout: float = 420) -> Run:
        deadline = time.monotonic() + timeout
        try:
            for p in self.procs:
                p.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        finally:
            self.kill()
        output = self.output()
        shutil.rmtree(self.folder, ignore_errors=True)  # the Run keeps the output
        return Run([p.returncode for p in self.procs], output, parse_log_lines(output))

    def kill(self) -> None:
        """Stop whatever still runs (whole process groups: torchrun and its workers)."""
        for p in self.procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def launch(commands: Sequence[Sequence[str]], *, timeout: float = 420,
           envs: Sequence[dict[str, str]] | None = None) -> Run:
    """Start the commands together (e.g. one torchrun per node) and wait for all of them."""
    return Launched(commands, envs).wait(timeout)


def wait_for_event(launched: Launched, predicate: Callable[[dict[str, Any]], bool], timeout: float,
                   what: str) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for event in launched.events():
            if predicate(event):
                return event
        if all(p.poll() is not None for p in launched.procs):
            break
        time.sleep(0.2)
    raise AssertionError(f"no {what} within {timeout}s:\n{launched.output()[-4000:]}")


def write_config(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(json.dumps(config, indent=2))
    return path


def torchrun_nodes(config: Path | None, nodes: int = 2) -> list[list[str]]:
    """One torchrun per 'node', rendezvousing over c10d on loopback, as the operator's pods do."""
    endpoint = f"127.0.0.1:{free_port()}"
    return [[str(TORCHRUN), f"--nnodes={nodes}", f"--node-rank={rank}", "--nproc-per-node=1",
             "--rdzv-backend=c10d", f"--rdzv-endpoint={endpoint}", "--rdzv-id=kubetune-test",
             "-m", "kubetune_trainer", *([str(config)] if config else [])] for rank in range(nodes)]


def python_module(config: Path) -> list[str]:
    """Without torchrun: a world of one."""
    return [str(PYTHON), "-m", "kubetune_trainer", str(config)]


# --- S3, a private MinIO, and a FineTuneJob to report to (for tests against the local cluster)


def s3_env(cluster: Any) -> dict[str, str]:
    """The AWS_* variables a trainer pod gets for the cluster's MinIO."""
    return {k: v for k, v in cluster.local.env().items() if k.startswith("AWS_")}


def assert_manifests_intact(s3: Any, bucket: str, prefix: str) -> list[int]:
    """Every committed checkpoint under `prefix` has every file its manifest lists, with the listed
    size and SHA-256; returns the committed steps."""
    import hashlib

    steps = []
    for key in keys(s3, bucket, prefix):
        if not key.endswith("/manifest.json"):
            continue
        manifest = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
        folder = key.rsplit("/", 1)[0]
        assert manifest["files"], key
        for entry in manifest["files"]:
            body = s3.get_object(Bucket=bucket, Key=f"{folder}/{entry['name']}")["Body"].read()
            assert len(body) == entry["size"] and hashlib.sha256(body).hexdigest() == entry["sha256"], entry
        parts = [k for k in keys(s3, bucket, folder + "/") if "/part-rank" in k]
        assert len(parts) == manifest["world_size"], parts
        steps.append(manifest["step"])
    return sorted(steps)


class Minio:
    """A MinIO of the test's own (same binary as the cluster's), to stop and start at will."""

    def __init__(self, binary: Path, data: Path) -> None:
        self.binary, self.data = binary, data
        self.port = free_port()
        self.user, self.password = "fault-" + os.urandom(3).hex(), os.urandom(12).hex()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        return {"AWS_ENDPOINT_URL": self.url, "AWS_ACCESS_KEY_ID": self.user,
                "AWS_SECRET_ACCESS_KEY": self.password, "AWS_DEFAULT_REGION": "us-east-1"}

    def client(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.url, region_name="us-east-1",
                            aws_access_key_id=self.user, aws_secret_access_key=self.password)

    def start(self) -> None:
        import urllib.request

        env = {**os.environ, "MINIO_ROOT_USER": self.user, "MINIO_ROOT_PASSWORD": self.password,
               "MINIO_BROWSER": "off", "MINIO_UPDATE": "off"}
        self.proc = subprocess.Popen([str(self.binary), "server", "--quiet", f"--address=127.0.0.1:{self.port}",
                                      str(self.data)], env=env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, "the test's MinIO exited"
            with contextlib.suppress(OSError):
                if urllib.request.urlopen(self.url + "/minio/health/ready", timeout=2).status == 200:
                    return
            time.sleep(0.2)
        raise AssertionError("the test's MinIO did not become ready in 60s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def job_reporting_access(cluster: Any, namespace: str, name: str, folder: Path) -> dict[str, str]:
    """What a worker pod of FineTuneJob `name` has for reporting: the namespace's worker identity as the
    operator creates it (ServiceAccount, Role, RoleBinding), a token of that account bound to a pod named as
    rank 0 is (the admission policy lets only `<job>-worker-<rank>` write `<job>`'s status), the cluster's
    CA, and the API server's address. The pod is held by a scheduling gate: it never runs, and it lives as
    long as the namespace, so its token stays valid."""
    from kubetune_operator.children import JobRef, namespace_identity

    job = JobRef(name, namespace, "")
    for manifest in namespace_identity(namespace):
        cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest))
    holder = {"apiVersion": "v1", "kind": "Pod",
              "metadata": {"name": job.worker_name(0), "namespace": namespace},
              "spec": {"serviceAccountName": job.service_account_name,
                       "schedulingGates": [{"name": "kubetune.io/token-holder"}],
                       "containers": [{"name": "never-runs", "image": "none"}]}}
    cluster.kubectl("apply", "-f", "-", input=json.dumps(holder))
    uid = cluster.kubectl("get", "pod", job.worker_name(0), "-n", namespace, "-o",
                          "jsonpath={.metadata.uid}").stdout.strip()
    token = cluster.kubectl("create", "token", job.service_account_name, "-n", namespace, "--duration=1h",
                            "--bound-object-kind=Pod", f"--bound-object-name={job.worker_name(0)}",
                            f"--bound-object-uid={uid}").stdout.strip()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "token").write_text(token)
    (folder / "ca.crt").write_bytes((cluster.local.pki / "ca.crt").read_bytes())
    host, port = cluster.local.api_url.removeprefix("https://").rsplit(":", 1)
    return {"KUBERNETES_SERVICE_HOST": host, "KUBERNETES_SERVICE_PORT": port,
            "KUBETUNE_SERVICE_ACCOUNT_DIR": str(folder), "KUBETUNE_JOB_NAME": name,
            "KUBETUNE_NAMESPACE": namespace}
