"""Getting the model and the data to where transformers and the data layer read them.

The model becomes a local folder: a pvc:// folder is used where it is mounted; an
s3:// prefix is downloaded once per node (the first process on the node
downloads, its siblings wait on a lock and reuse the folder), all files at
once; hf://org/name@revision comes from the Hub into the node's scratch cache.
Datasets are read where they are (`UriFiles`), so an error still names the URI
and line the user wrote.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, TypeVar

from kubetune_api import StorageSpec, parse_uri
from kubetune_trainer.data.sources import SUFFIXES, list_local, open_local, suffix_of
from kubetune_trainer.errors import ConfigError, DataError
from kubetune_trainer.logs import log_event
from kubetune_trainer.settings import Settings
from kubetune_trainer.storage import (
    FsStore,
    S3Store,
    download_all,
    mounted_path,
    retry,
    s3_client,
)

T = TypeVar("T")

_COMPLETE = ".kubetune-complete"
# What a model folder needs; other files under the prefix (e.g. a checkpoints/ folder) are skipped.
_HF_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja", "*.py", "*.tiktoken"]
# The weights: what the preflight, which reads only the config and the tokenizer, leaves out.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack", ".ckpt")


@contextlib.contextmanager
def node_lock(path: Path) -> Iterator[None]:
    """An exclusive lock shared by the processes of one node (one scratch folder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def path_slug(uri: str) -> str:
    """A short, file-name-safe name for `uri` (its local cache folder)."""
    return hashlib.sha256(uri.encode()).hexdigest()[:16]


def stage_model(uri: str, settings: Settings, storage: StorageSpec, *, weights: bool = True) -> str:
    """A local folder holding the model of `uri` (s3://, hf:// or pvc://); without `weights`, only
    its config and tokenizer files (a pvc:// folder is used where it is, weights and all)."""
    if uri.startswith("s3://"):
        path = _stage_s3_model(uri, settings, storage, weights)
    elif uri.startswith("hf://"):
        path = _stage_hub_model(uri, settings, weights)
    else:
        path = mounted_path(uri, settings.pvc_root)
    if not (Path(path) / "config.json").is_file():
        what = "is not a folder" if not Path(path).is_dir() else "has no config.json"
        raise ConfigError(f"model.uri {uri}: {what}; expected a folder written by save_pretrained "
                          "(config.json, *.safetensors, tokenizer files)")
    return path


def _stage_s3_model(uri: str, settings: Settings, storage: StorageSpec, weights: bool) -> str:
    target = settings.scratch_dir / "models" / (path_slug(uri) + ("" if weights else "-config"))
    with node_lock(settings.scratch_dir / "models" / ".lock"):
        if (target / _COMPLETE).is_file():
            return str(target)
        store = S3Store(uri.rstrip("/") + "/", s3_client(storage), settings)
        try:
            # A model folder is flat; sub-folders (checkpoints of the job that wrote it) are not needed.
            keys = [k for k in store.list("") if "/" not in k and (weights or not k.endswith(WEIGHT_SUFFIXES))]
            if not keys:
                raise ConfigError(f"model.uri {uri}: no files under this prefix; expected a folder written by "
                                  "save_pretrained (config.json, *.safetensors, tokenizer files)")
            tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=target.parent))
            try:
                download_all(store, [(k, tmp / k) for k in keys], what=f"downloading model.uri {uri}",
                             give_up_after=min(settings.upload_give_up_seconds, 300))
                (tmp / _COMPLETE).touch()
                shutil.rmtree(target, ignore_errors=True)
                tmp.rename(target)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        finally:
            store.close()
        log_event("model_staged", uri=uri, path=str(target), files=len(keys))
        return str(target)


def _stage_hub_model(uri: str, settings: Settings, weights: bool) -> str:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    location = parse_uri(uri)
    with node_lock(settings.scratch_dir / "hf" / ".lock"):
        try:
            path = snapshot_download(location.location, revision=location.revision,
                                     cache_dir=settings.scratch_dir / "hf",
                                     allow_patterns=_HF_PATTERNS if weights else [p for p in _HF_PATTERNS
                                                                                  if not p.endswith(WEIGHT_SUFFIXES)])
        except RevisionNotFoundError:
            raise ConfigError(f"model.uri {uri}: the repository has no revision {location.revision!r}") from None
        except GatedRepoError:
            raise ConfigError(f"model.uri {uri}: the repository is gated; accept its terms and give the pods "
                              "an HF_TOKEN (spec.env)") from None
        except RepositoryNotFoundError:
            raise ConfigError(f"model.uri {uri}: no such repository on the Hub (or it is private: give the "
                              "pods an HF_TOKEN in spec.env)") from None
        except LocalEntryNotFoundError:
            raise ConfigError(f"model.uri {uri}: the Hub cannot be reached from the pods (offline); copy the "
                              "model to s3:// or a PersistentVolumeClaim and use that URI") from None
        except HfHubHTTPError as e:
            raise ConfigError(f"model.uri {uri}: the Hub refused the download ({str(e).splitlines()[0]})") from None
    return str(path)


class UriFiles:
    """Dataset files named by s3://, pvc:// and hf://datasets/ URIs (a FileAccess)."""

    def __init__(self, settings: Settings, storage: StorageSpec) -> None:
        self.settings, self.storage = settings, storage
        self._stores: dict[str, S3Store] = {}

    def _s3(self, uri: str, call: Callable[[S3Store, str], T | None]) -> T:
        """call(store, key) for an s3:// dataset file, retried while the store is unavailable."""
        store, key = self._store(uri), parse_uri(uri).path
        found = retry(lambda: call(store, key), what=f"reading {uri}",
                      give_up_after=min(self.settings.upload_give_up_seconds, 300))
        if found is None:
            raise DataError(f"{uri}: dataset file not found")
        return found

    def fingerprint(self, uri: str) -> str:
        """What identifies one dataset file's content: its S3 ETag and size, else the SHA-256 of its bytes."""
        if uri.startswith("s3://"):
            info = self._s3(uri, lambda store, key: store.head(key))
            if info.etag:
                return f"etag:{info.etag}:{info.size}"
        digest = hashlib.sha256()
        with self.open(uri) as stream:
            while block := stream.read(8 << 20):
                digest.update(block)
        return f"sha256:{digest.hexdigest()}"

    def _store(self, uri: str) -> S3Store:
        bucket = parse_uri(uri).location
        if bucket not in self._stores:
            client = next(iter(self._stores.values())).client if self._stores else s3_client(self.storage)
            self._stores[bucket] = S3Store(f"s3://{bucket}/", client, self.settings)
        return self._stores[bucket]

    def files(self, uri: str) -> list[str]:
        if uri.startswith("s3://"):
            if suffix_of(uri) in SUFFIXES:
                return [uri]
            location = parse_uri(uri)
            prefix = location.path.rstrip("/") + "/" if location.path else ""
            store = self._store(uri)
            keys = [k for k in store.list(prefix) if suffix_of(k) in SUFFIXES]
            if not keys:
                raise DataError(f"{uri}: no {' or '.join(SUFFIXES)} files under this prefix")
            return [f"s3://{location.location}/{k}" for k in keys]
        if uri.startswith("hf://"):
            return self._hub_files(uri)
        path = mounted_path(uri, self.settings.pvc_root)
        found = list_local(path, shown_as=uri)
        return [uri if p == path else uri.rstrip("/") + "/" + str(Path(p).relative_to(path)) for p in found]

    def open(self, uri: str) -> IO[bytes]:
        if uri.startswith("s3://"):
            return io.BytesIO(self._s3(uri, lambda store, key: store.get_bytes(key)))
        if uri.startswith("hf://"):
            return self._hub_open(uri)
        return open_local(mounted_path(uri, self.settings.pvc_root), shown_as=uri)

    @staticmethod
    def _hub_path(uri: str) -> str:
        location = parse_uri(uri)
        revision = f"@{location.revision}" if location.revision else ""
        return f"datasets/{location.location}{revision}" + (f"/{location.path}" if location.path else "")

    def _hub_files(self, uri: str) -> list[str]:
        from huggingface_hub import HfFileSystem

        if suffix_of(uri) in SUFFIXES:
            return [uri]
        root = self._hub_path(uri)
        try:
            found = sorted(p for p in HfFileSystem().find(root) if suffix_of(p) in SUFFIXES)
        except Exception as e:  # the Hub client raises many kinds; all mean "cannot list it"
            raise DataError(f"{uri}: cannot list the dataset on the Hub ({str(e).splitlines()[0]})") from None
        if not found:
            raise DataError(f"{uri}: no {' or '.join(SUFFIXES)} files in this dataset repository folder")
        return [uri.rstrip("/") + "/" + p[len(root):].lstrip("/") for p in found]

    def _hub_open(self, uri: str) -> IO[bytes]:
        from huggingface_hub import HfFileSystem

        try:
            return io.BytesIO(HfFileSystem().cat_file(self._hub_path(uri)))
        except Exception as e:
            raise DataError(f"{uri}: cannot read the dataset file from the Hub "
                            f"({str(e).splitlines()[0]})") from None


def check_storage(uris: list[str | None], settings: Settings, storage: StorageSpec) -> None:
    """Reach every bucket the job uses once, so that wrong credentials or a missing bucket fail in
    seconds, before any model is loaded; pvc:// locations must be mounted."""
    client = None
    seen: set[str] = set()
    for uri in uris:
        if not uri or uri.startswith("hf://"):
            continue
        if uri.startswith("s3://"):
            bucket = parse_uri(uri).location
            if bucket in seen:
                continue
            seen.add(bucket)
            client = client or s3_client(storage)
            store = S3Store(f"s3://{bucket}/", client, settings)
            try:
                store.check_access()
            finally:
                store.close()
        elif uri.startswith("pvc://"):
            mount = Path(settings.pvc_root) / parse_uri(uri).location
            if not mount.is_dir():
                raise ConfigError(f"{uri}: the PersistentVolumeClaim is not mounted at {mount}")


def check_writable(uri: str, settings: Settings) -> None:
    """A pvc:// checkpoint or output folder exists (or can be made) and is writable."""
    if uri.startswith("pvc://"):
        FsStore(mounted_path(uri, settings.pvc_root), uri).check_access()
