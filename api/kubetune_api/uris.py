"""Where a job reads its model and data and writes checkpoints and the result.

Every location in a FineTuneJob is a URI with one of three schemes:

- `s3://bucket/key-or-prefix`: any S3-compatible store (AWS, MinIO, Ceph, ...),
  reached with spec.storage;
- `hf://org/name[@revision]` (a model repository) and
  `hf://datasets/org/name[@revision][/path/in/repo]` (a dataset repository) on
  the Hugging Face Hub, the notation of huggingface_hub's HfFileSystem; read-only;
- `pvc://claim[/path]`: a PersistentVolumeClaim in the job's namespace, mounted
  by the operator at PVC_MOUNT_ROOT/<claim> in every worker.

A plain local path is not accepted: the workers run on other machines than
whoever wrote the manifest, so a path only means something inside a volume, and
a pvc:// URI says which one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import Field

from .base import NOT_SPACE, EmptyMeansUnset, Matches
from .constants import PVC_MOUNT_ROOT
from .kube import DNS_SUBDOMAIN

MAX_URI_LENGTH = 1024

_S3 = r"s3://(?P<bucket>[a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(?P<s3path>/" + NOT_SPACE + "*)?"
_PVC = rf"pvc://(?P<claim>{DNS_SUBDOMAIN})(?P<pvcpath>/{NOT_SPACE}*)?"
_HF_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]*"
_HF_REV = r"(@(?P<{}>[A-Za-z0-9][A-Za-z0-9._-]*))?"
_HF_MODEL = rf"hf://(?P<model>{_HF_NAME}/{_HF_NAME}){_HF_REV.format('mrev')}"
_HF_DATASET = rf"hf://datasets/(?P<dataset>{_HF_NAME}/{_HF_NAME}){_HF_REV.format('drev')}(?P<hfpath>/{NOT_SPACE}*)?"

# Group names are for parse_uri only; CEL (RE2) gets the same patterns without them.
_STRIP_GROUP_NAMES = re.compile(r"\?P<\w+>")


def _uri_format(what: str, *patterns: str) -> Matches:
    return Matches(_STRIP_GROUP_NAMES.sub("", "|".join(patterns)), what)


_URI_LENGTH = Field(min_length=1, max_length=MAX_URI_LENGTH)
ModelUri = Annotated[
    str,
    _URI_LENGTH,
    _uri_format(
        "an s3://bucket/prefix, hf://org/name[@revision] or pvc://claim/path URI",
        _S3,
        _HF_MODEL,
        _PVC,
    ),
]
DataUri = Annotated[
    str,
    _URI_LENGTH,
    _uri_format(
        "an s3://bucket/key, hf://datasets/org/name[@revision][/path] or pvc://claim/path URI",
        _S3,
        _HF_DATASET,
        _PVC,
    ),
]
StoreUri = Annotated[
    str, _URI_LENGTH, _uri_format("an s3://bucket/prefix or pvc://claim/path URI", _S3, _PVC)
]
OptionalDataUri = Annotated[DataUri | None, EmptyMeansUnset()]
OptionalStoreUri = Annotated[StoreUri | None, EmptyMeansUnset()]

Scheme = Literal["s3", "hf", "pvc"]
_ANY = re.compile("|".join([_S3, _PVC, _HF_MODEL, _HF_DATASET]))


@dataclass(frozen=True)
class StorageUri:
    """A parsed location.

    `location` is the bucket (s3), the claim (pvc) or the repository id
    "org/name" (hf); `path` is the key or prefix inside it, without a leading
    "/" ("" for the whole bucket, claim or repository).
    """

    uri: str
    scheme: Scheme
    location: str
    path: str = ""
    revision: str | None = None
    repo_type: Literal["model", "dataset"] | None = None

    def child(self, *parts: str) -> str:
        """The URI of a file or folder below this one: child("step-00000500", "manifest.json")."""
        return "/".join([self.uri.rstrip("/"), *(p.strip("/") for p in parts)])

    def local_path(self, mount_root: str = PVC_MOUNT_ROOT) -> str:
        """Where a pvc:// location appears inside a worker pod."""
        if self.scheme != "pvc":
            raise ValueError(f"{self.uri} is not a pvc:// URI; only those are mounted")
        return "/".join(p for p in [mount_root.rstrip("/"), self.location, self.path] if p)


def parse_uri(uri: str) -> StorageUri:
    """Split a URI that the spec admitted; ValueError for anything else."""
    match = _ANY.fullmatch(uri)
    if match is None:
        raise ValueError(f"not an s3://, hf:// or pvc:// URI: {uri!r}")
    g = match.groupdict()
    if g["bucket"]:
        return StorageUri(uri, "s3", g["bucket"], (g["s3path"] or "").lstrip("/"))
    if g["claim"]:
        return StorageUri(uri, "pvc", g["claim"], (g["pvcpath"] or "").lstrip("/"))
    if g["model"]:
        return StorageUri(uri, "hf", g["model"], "", g["mrev"], "model")
    return StorageUri(
        uri, "hf", g["dataset"], (g["hfpath"] or "").lstrip("/"), g["drev"], "dataset"
    )
