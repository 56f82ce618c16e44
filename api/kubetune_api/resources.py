"""What a job runs on: machines, GPUs, pod resources and placement.

Part of the FineTuneJob spec (see spec.py).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from .base import ApiModel, EmptyMeansUnset, Rule
from .constants import GPU_MEMORY_LABEL, GPU_RESOURCE
from .kube import FreeForm, ObjectName, Quantity
from .uris import OptionalStoreUri

_Quantities = Annotated[dict[str, Quantity], Field(max_length=16)]


def _no_gpu_rule(field: str) -> Rule:
    return Rule(
        field=field,
        cel=f"!has(self.{field}) || !('{GPU_RESOURCE}' in self.{field})",
        message=f"may not name {GPU_RESOURCE}; set resources.gpusPerNode instead",
        holds=lambda r: GPU_RESOURCE not in (getattr(r, field) or {}),
        reason="FieldValueForbidden",
    )


class ResourcesSpec(ApiModel):
    """How many machines and GPUs the job uses, and where its pods may run."""

    nodes: int = Field(
        default=1,
        ge=1,
        le=1024,
        description="Worker pods, one per machine; each runs gpusPerNode training processes.",
    )
    gpus_per_node: int = Field(
        default=1,
        ge=0,
        le=64,
        description=f"GPUs ({GPU_RESOURCE}) each worker pod requests, and training processes "
        "it runs. 0: one process on CPU (tests and demos).",
    )
    requests: _Quantities | None = Field(
        default=None,
        description='Resources each worker pod requests besides GPUs, e.g. {cpu: "32", '
        "memory: 256Gi}. The pod's CPU (limits.cpu, else requests.cpu) shared by its training "
        "processes sets the threads each may use (OMP_NUM_THREADS, at least 1; spec.env may "
        "override it). Unset: none beyond the GPUs.",
    )
    limits: _Quantities | None = Field(
        default=None,
        description="Resource limits of each worker pod besides GPUs, e.g. {memory: 300Gi}. "
        "Unset: none beyond the GPUs.",
    )
    gpu_memory: Quantity | None = Field(
        default=None,
        description="Memory of each GPU, e.g. 80Gi. The preflight fails a job whose estimated memory "
        f"per GPU exceeds it. Unset: the nodeSelector's {GPU_MEMORY_LABEL} (MiB, the label GPU feature "
        "discovery sets) when it names one; else the estimate is reported but not checked.",
    )
    node_selector: (
        Annotated[dict[str, Annotated[str, Field(max_length=63)]], Field(max_length=32)] | None
    ) = Field(
        default=None,
        description="Node labels a machine must have to run a worker, as in a Pod. Unset: any.",
    )
    tolerations: Annotated[list[FreeForm], Field(max_length=32)] | None = Field(
        default=None,
        description="Taints the workers tolerate, as in a Pod's tolerations (key, operator, "
        "value, effect, tolerationSeconds). Unset: none.",
    )
    affinity: FreeForm | None = Field(
        default=None,
        description="Node and pod affinity of the workers, as in a Pod's affinity. Unset: none.",
    )
    priority_class_name: Annotated[ObjectName | None, EmptyMeansUnset()] = Field(
        default=None,
        description="PriorityClass of the worker pods; a higher one may pre-empt other pods. "
        "Unset or empty: the cluster's default priority.",
    )
    scheduler_name: Annotated[ObjectName | None, EmptyMeansUnset()] = Field(
        default=None,
        description="Scheduler that places the worker pods, e.g. a gang scheduler. Unset or "
        "empty: the default scheduler.",
    )

    RULES = (_no_gpu_rule("requests"), _no_gpu_rule("limits"))

    @property
    def processes_per_node(self) -> int:
        """Training processes in each worker pod (torchrun --nproc-per-node)."""
        return max(self.gpus_per_node, 1)

    @property
    def world_size(self) -> int:
        """Training processes over all nodes."""
        return self.nodes * self.processes_per_node

    @property
    def total_gpus(self) -> int:
        return self.nodes * self.gpus_per_node


class PreflightResources(ApiModel):
    """Resources of the preflight pod, as in a container."""

    requests: _Quantities | None = Field(
        default=None,
        description='What the preflight pod requests, e.g. {cpu: "2", memory: 8Gi}. Unset: nothing.',
    )
    limits: _Quantities | None = Field(
        default=None, description="The preflight pod's limits, e.g. {memory: 16Gi}. Unset: none."
    )

    RULES = (_no_gpu_rule("requests"), _no_gpu_rule("limits"))


class PreflightSpec(ApiModel):
    """The CPU-only check of storage, model and data that runs before any worker pod."""

    enabled: bool = Field(
        default=True,
        description="true: before the first worker pod, one pod without GPUs checks that the "
        "credentials can read the model and data and write the checkpoint and output prefixes, that "
        "the model and tokenizer load, reads and tokenizes every record (failing with the file:line "
        "of the first bad one), estimates the memory per GPU, and stores the tokenized data in the "
        "cache, which the workers then read instead of tokenizing. A failure is phase Failed, reason "
        "PreflightFailed, before any GPU is requested. It runs once per job, not again on restarts. "
        "false: the workers read and tokenize the data themselves.",
    )
    resources: PreflightResources | None = Field(
        default=None,
        description='Requests and limits of the preflight pod. Unset: requests {cpu: 500m, memory: '
        "1Gi}, no limits (it may use more where the node has it).",
    )
    node_selector: (
        Annotated[dict[str, Annotated[str, Field(max_length=63)]], Field(max_length=32)] | None
    ) = Field(
        default=None,
        description="Node labels a machine must have to run the preflight pod (e.g. a CPU pool), as "
        "in a Pod. Unset: any node; spec.resources' placement is the workers' only.",
    )
    tolerations: Annotated[list[FreeForm], Field(max_length=32)] | None = Field(
        default=None,
        description="Taints the preflight pod tolerates, as in a Pod's tolerations. Unset: none.",
    )
    cache_uri: OptionalStoreUri = Field(
        default=None,
        description="s3:// or pvc:// prefix of the tokenized-data cache, shared by every job that "
        "names it: a data set is tokenized once per content, tokenizer and settings. Unset: "
        "kubetune-cache/ at the root of the checkpoint location's bucket or claim.",
    )

    def resources_or_default(self) -> PreflightResources:
        return self.resources or PreflightResources(requests={"cpu": "500m", "memory": "1Gi"})
