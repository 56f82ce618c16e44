"""`make demo`: show the local cluster working end to end.

For now the demo proves the test bed: fake GPU nodes are Ready, a pod asking
for 8 GPUs is scheduled and Running, and S3 round-trips. The fine-tuning run
itself joins here once the operator and the trainer exist.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from localcluster import FAKE_NODE_TOLERATION, REPO, LocalCluster, State


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run-dir", type=Path, default=REPO / ".local")
    args = parser.parse_args()
    cluster = LocalCluster(args.run_dir)
    state = State.load(cluster.state_file)
    if state is None:
        print("the local cluster is not up: run `make up` first", file=sys.stderr)
        return 1
    cluster.state = state
    env = cluster.env()
    kenv = {**os.environ, "KUBECONFIG": env["KUBECONFIG"]}
    kubectl = str(cluster.bins.kube("kubectl"))

    def run(*cmd: str, input: str | None = None) -> str:
        print("$ kubectl " + " ".join(cmd))
        out = subprocess.run([kubectl, *cmd], env=kenv, input=input, capture_output=True, text=True, check=True).stdout
        print(out, end="")
        return out

    run("version")
    run("get", "nodes", "-o", "custom-columns=NAME:.metadata.name,STATUS:.status.conditions[-1].type,GPUS:.status.allocatable.nvidia\\.com/gpu")
    run("create", "namespace", "kubetune-demo", "--dry-run=client", "-o", "yaml")
    subprocess.run([kubectl, "create", "namespace", "kubetune-demo"], env=kenv, capture_output=True)
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "gpu-probe", "namespace": "kubetune-demo"},
           "spec": {"containers": [{"name": "main", "image": "busybox",
                                    "resources": {"limits": {"nvidia.com/gpu": "8"}}}],
                    # a kwok GPU node: the pod is shown Running there without running anything
                    "tolerations": [FAKE_NODE_TOLERATION], "nodeSelector": {"type": "kwok"}}}
    deadline = time.monotonic() + 30
    while subprocess.run([kubectl, "get", "sa", "default", "-n", "kubetune-demo"], env=kenv, capture_output=True).returncode:
        if time.monotonic() > deadline:
            raise SystemExit("namespace kubetune-demo has no default ServiceAccount after 30s")
        time.sleep(0.2)
    run("apply", "-f", "-", input=json.dumps(pod))
    run("wait", "-n", "kubetune-demo", "--for=jsonpath={.status.phase}=Running", "pod/gpu-probe", "--timeout=60s")
    run("get", "pod", "gpu-probe", "-n", "kubetune-demo", "-o", "wide")
    run("delete", "namespace", "kubetune-demo", "--wait=false")

    import boto3

    s3 = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name=env["AWS_DEFAULT_REGION"],
                      aws_access_key_id=env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])
    s3.create_bucket(Bucket="kubetune-demo")
    s3.put_object(Bucket="kubetune-demo", Key="hello.txt", Body=b"hello from kubetune")
    body = s3.get_object(Bucket="kubetune-demo", Key="hello.txt")["Body"].read().decode()
    print(f"S3 {env['AWS_ENDPOINT_URL']}: s3://kubetune-demo/hello.txt -> {body!r}")
    print(f"\nThe local cluster is up. Use it by hand:\n  source {cluster.env_file}\n  kubectl get nodes\n"
          "Stop it with: make down")
    return 0


if __name__ == "__main__":
    sys.exit(main())
