"""What the suite checks after the faults, and the table it prints.

    checkpoints  every file of every committed checkpoint's manifest is in S3 with its size and SHA-256
    orphans      worker pods whose FineTuneJob is gone, and trainer processes no live pod accounts for
    duplicates   two live worker pods of one rank of one job (seen by the watcher during the run)
    secrets      the S3 keys' values in pod logs, termination messages, pod annotations (the trainer's
                 config travels in one), Events, FineTuneJob statuses or ConfigMaps
    steps lost   per restart, the last step logged before it minus the step resumed from: at most
                 checkpoint.everySteps, unless the checkpoint saved after the resume point was still
                 uploading (then at most everySteps past the newest save, and more than one
                 checkpoint uncommitted only during an S3 fault); never a resume from older than the
                 newest commit
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from .. import s3folders
from .faults import Injected
from .jobs import JOB_LABEL, Restart, is_terminal
from .kube import Kube
from .processes import pod_processes


@dataclass
class CheckpointCheck:
    manifests: int = 0
    files: int = 0
    problems: list[str] = field(default_factory=list)


def verify_checkpoints(s3: Any, bucket: str, prefixes: list[str]) -> CheckpointCheck:
    """Read every step-*/manifest.json below each prefix and check each file it lists."""
    from kubetune_trainer.manifest import MANIFEST, CheckpointManifest

    check = CheckpointCheck()
    for prefix in prefixes:
        for key in s3folders.keys(s3, bucket, prefix):
            rest = key[len(prefix):]
            if not (rest.startswith("step-") and rest.count("/") == 1 and rest.endswith("/" + MANIFEST)):
                continue
            folder = key.rsplit("/", 1)[0] + "/"
            manifest = CheckpointManifest.from_json(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
            check.manifests += 1
            for entry in manifest.files:
                check.files += 1
                try:
                    body = s3.get_object(Bucket=bucket, Key=folder + entry.name)["Body"].read()
                except s3.exceptions.NoSuchKey:
                    check.problems.append(f"{folder}{entry.name}: missing")
                    continue
                if len(body) != entry.size or hashlib.sha256(body).hexdigest() != entry.sha256:
                    check.problems.append(f"{folder}{entry.name}: size or SHA-256 differs from the manifest")
    return check


def orphans(kube: Kube, namespace: str) -> list[str]:
    """Worker pods whose owner FineTuneJob is gone, and trainer processes of pods that are not live."""
    jobs = {j["metadata"]["uid"] for j in kube.jobs(namespace)}
    pods = kube.pods(namespace, JOB_LABEL)
    found = [f"pod {p['metadata']['name']}: its FineTuneJob is gone" for p in pods
             if not {o["uid"] for o in p["metadata"].get("ownerReferences", [])} & jobs]
    live = {p["metadata"]["name"] for p in pods
            if p.get("status", {}).get("phase") in ("Pending", "Running") and not p["metadata"].get("deletionTimestamp")}
    found += [f"process {p.pid} ({p.hostname}): no live pod" for p in pod_processes({namespace})
              if (p.is_rank or p.is_launcher) and p.hostname not in live]
    return found


def find_secrets(kube: Kube, namespaces: list[str], values: list[str], seen: list[str]) -> list[str]:
    """Where any of `values` appears now, after `seen` (findings of the watcher during the run)."""
    places: list[tuple[str, str]] = []
    for ns in namespaces:
        for pod in kube.pods(ns):
            name = pod["metadata"]["name"]
            places.append((f"{ns}/{name} status", json.dumps(pod.get("status", {}))))
            places.append((f"{ns}/{name} annotations", json.dumps(pod["metadata"].get("annotations") or {})))
            for previous in (False, True):
                places.append((f"{ns}/{name} log{' (previous)' if previous else ''}", kube.log(ns, name, previous=previous)))
        places += [(f"{ns} events", json.dumps(kube.json(kube.core.list_namespaced_event, ns)["items"])),
                   (f"{ns} configmaps", json.dumps(kube.json(kube.core.list_namespaced_config_map, ns)["items"]))]
        places += [(f"{ns}/{j['metadata']['name']} status", json.dumps(j.get("status", {}))) for j in kube.jobs(ns)]
    return [*seen, *(where for where, text in places for value in values if value and value in text)]


@dataclass
class Report:
    seed: int
    kinds: tuple[str, ...]
    requested: int
    faults: list[Injected]
    jobs: list[dict[str, Any]]
    restarts: list[tuple[Restart, str]]  # each with the kind of fault that preceded it ("" none)
    every_steps: int
    checkpoints: CheckpointCheck
    orphans: list[str]
    duplicates: list[str]
    secrets: list[str]
    seconds: float
    time_limit: float
    notes: list[str] = field(default_factory=list)

    # ------------------------------------------------------------ the verdicts
    @property
    def unfinished(self) -> list[str]:
        return [j["metadata"]["name"] for j in self.jobs if not is_terminal(j)]

    @property
    def failed(self) -> list[str]:
        return [j["metadata"]["name"] for j in self.jobs if (j.get("status") or {}).get("phase") == "Failed"]

    @property
    def over_bound(self) -> list[Restart]:
        """Restarts that lost more than their bound (Restart.within_bound)."""
        return [r for r, _ in self.restarts if not r.within_bound(self.every_steps)]

    def failures(self) -> list[str]:
        out = []
        if len(self.faults) < self.requested:
            out.append(f"only {len(self.faults)} of {self.requested} faults injected within the time limit")
        if self.unfinished:
            out.append(f"jobs not finished: {', '.join(self.unfinished)}")
        if self.failed:
            out.append(f"jobs failed: {', '.join(self.failed)}")
        if self.over_bound:
            out.append(f"{len(self.over_bound)} restart(s) lost more than their bound or resumed from an old commit")
        if self.checkpoints.problems or not self.checkpoints.manifests:
            out.append("committed checkpoints: " + ("; ".join(self.checkpoints.problems[:5]) or "none found"))
        if self.orphans:
            out.append("orphans: " + "; ".join(self.orphans[:5]))
        if self.duplicates:
            out.append("duplicate pods: " + ", ".join(self.duplicates))
        if self.secrets:
            out.append("secret values found in: " + ", ".join(sorted(set(self.secrets))[:5]))
        if self.seconds > self.time_limit:
            out.append(f"took {self.seconds:.0f} s, over the time limit of {self.time_limit:.0f} s")
        return out

    @property
    def ok(self) -> bool:
        return not self.failures()

    # ------------------------------------------------------------ the table
    def table(self) -> str:
        lines = [f"chaos: seed {self.seed}, {len(self.faults)}/{self.requested} faults, {len(self.jobs)} jobs, "
                 f"{self.seconds:.0f} s (limit {self.time_limit:.0f} s)", ""]
        lines.append(f"{'fault':<20} {'injected':>8} {'restarts after':>14} {'max steps lost':>14}")
        count = Counter(f.kind for f in self.faults)
        after: dict[str, list[Restart]] = {}
        for restart, kind in self.restarts:
            after.setdefault(kind or "(none before)", []).append(restart)
        for kind in [*self.kinds, "(none before)"]:
            if kind == "(none before)" and kind not in after:
                continue
            rs = after.get(kind, [])
            lines.append(f"{kind:<20} {count.get(kind, 0):>8} {len(rs):>14} "
                         f"{max((r.lost for r in rs), default=0):>14}")
        lines.append(f"{'total':<20} {len(self.faults):>8} {len(self.restarts):>14} "
                     f"{max((r.lost for r, _ in self.restarts), default=0):>14}")
        lines.append("")
        causes: Counter[str] = Counter()
        for job in self.jobs:
            for cause, n in ((job.get("status") or {}).get("restarts") or {}).items():
                causes[cause] += int(n)
        lines.append("gang restarts (status.restarts): "
                     + (", ".join(f"{c} {n}" for c, n in sorted(causes.items())) or "none"))
        phases = Counter((j.get("status") or {}).get("phase", "Pending") for j in self.jobs)
        lines.append("jobs: " + ", ".join(f"{p} {n}" for p, n in sorted(phases.items())))
        for job in self.jobs:
            status = job.get("status") or {}
            if status.get("phase") != "Succeeded":
                lines.append(f"  {job['metadata']['name']}: {status.get('phase', 'Pending')}: {status.get('message', '')}")
        if self.restarts:
            lines.append("restarts (a new run of a job's trainer; the first fault after its last step seen):")
        for r, kind in self.restarts:
            flag = ("  OVER BOUND" if r in self.over_bound
                    else f"  (over everySteps: {', '.join(map(str, r.uncommitted))} uploading"
                         + (" during an S3 fault)" if r.store_faulty else ")") if r.lost > self.every_steps else "")
            lines.append(f"  {r.job}: step {r.reached} reached -> resumed from {r.resumed} (newest commit "
                         f"{r.newest_commit}): {r.lost} lost; after {kind or 'no fault'}{flag}")
        lost = [r.lost for r, _ in self.restarts]
        in_flight = sum(1 for r, _ in self.restarts if r.lost > self.every_steps and r.upload_in_flight)
        lines.append(f"steps lost per restart (bound: checkpoint.everySteps = {self.every_steps}): "
                     + (f"max {max(lost)}, mean {sum(lost) / len(lost):.1f} over {len(lost)}" if lost else "no restarts")
                     + (f"; {in_flight} over the bound while that checkpoint was still uploading" if in_flight else "")
                     + f"; out of bounds: {len(self.over_bound)}")
        lines.append(f"committed checkpoints verified: {self.checkpoints.manifests} manifests, "
                     f"{self.checkpoints.files} files, {len(self.checkpoints.problems)} problems")
        lines.append(f"orphan pods or processes: {len(self.orphans)}; duplicate worker pods: {len(self.duplicates)}")
        lines.append(f"secret values found (logs, annotations, Events, statuses, ConfigMaps): {len(self.secrets)}")
        lines += [f"note: {n}" for n in self.notes]
        failures = self.failures()
        lines.append("")
        lines.append("result: " + ("PASS" if not failures else "FAIL\n  " + "\n  ".join(failures)))
        return "\n".join(lines)
