"""Informers: the operator's view of its FineTuneJobs and worker pods, kept by LIST + WATCH.

A reconcile decides from this view and only writes (reconcile.py); it reads
nothing from the API server. Each `Informer` is one thread that LISTs its
resource (label-filtered on the server: only worker pods, never every pod of
the cluster), replaces its `Store` with the result, then WATCHes from the
list's resourceVersion (with bookmarks) until the server ends the stream, and
LISTs again when the server says the version is too old (410 Gone) or the
connection fails. A relist removes what vanished while nobody watched, so the
view never keeps a deleted pod.

The operator's own writes go into the store as soon as the API server answers
(`Store.write`): a pass right after a create, delete or status patch sees its
result even before the watch delivers it, and an older version that the watch
delivers later never replaces a newer one. Versions are compared as the
integers etcd-backed API servers give (`resourceVersion`); where one does not
parse, the newer arrival wins, as in a plain informer.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kubernetes.client.rest import ApiException
from kubernetes.watch.watch import iter_resp_lines

from kubetune_api import Manifest
from kubetune_api.constants import CONFIG_ANNOTATION

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, name)
WATCH_SECONDS = 300  # the server ends each watch after this long; the next one resumes from the last version
PAGE_SIZE = 500
RETRY_SECONDS = 2.0
GONE_SECONDS = 600.0  # how long the uid of a deleted object is remembered


def _version(obj: Manifest) -> int | None:
    try:
        return int(obj["metadata"].get("resourceVersion", ""))
    except ValueError:
        return None


def _older(new: Manifest, old: Manifest) -> bool:
    """Whether `new` is a version that came before `old` (same object or not)."""
    n, o = _version(new), _version(old)
    return n is not None and o is not None and n < o


def _same_version(a: Manifest, b: Manifest) -> bool:
    v = _version(a)
    return v is not None and v == _version(b)


def _key(obj: Manifest) -> Key:
    meta = obj["metadata"]
    return meta.get("namespace", ""), meta["name"]


class Store:
    """Objects of one resource by (namespace, name), and by (namespace, index value) when an index is given."""

    def __init__(self, index: Callable[[Manifest], str | None] | None = None) -> None:
        self._objects: dict[Key, Manifest] = {}
        self._index_of = index
        self._index: defaultdict[Key, set[str]] = defaultdict(set)
        # uids of objects known gone, for a while: a late answer to the operator's own write never brings one back
        self._gone: dict[str, float] = {}
        self._lock = threading.Lock()
        self.synced = threading.Event()  # set once the first LIST is in

    def get(self, namespace: str, name: str) -> Manifest | None:
        with self._lock:
            return self._objects.get((namespace, name))

    def by_index(self, namespace: str, value: str) -> list[Manifest]:
        with self._lock:
            names = sorted(self._index.get((namespace, value), ()))
            return [self._objects[(namespace, n)] for n in names]

    def items(self) -> list[Manifest]:
        with self._lock:
            return list(self._objects.values())

    def __len__(self) -> int:
        return len(self._objects)

    # ------------------------------------------------------------ changes (each returns the keys it changed)
    def write(self, obj: Manifest) -> bool:
        """A version of an object (an event's, or the API server's answer to the operator's own write): kept
        unless the store has it or a newer one already."""
        with self._lock:
            if obj["metadata"].get("uid") in self._gone:
                return False
            old = self._objects.get(_key(obj))
            if old is not None and (_older(obj, old) or _same_version(obj, old)):
                return False
            self._put(obj)
            return True

    def remove(self, obj: Manifest) -> bool:
        """The object is gone (a DELETED event, or the answer to a deletion that took effect at once): removed
        unless the store holds a newer object of its name."""
        with self._lock:
            self._bury(obj["metadata"].get("uid"))
            old = self._objects.get(_key(obj))
            if old is None or old["metadata"].get("uid") != obj["metadata"].get("uid") or _older(obj, old):
                return False
            self._drop(_key(obj))
            return True

    def _bury(self, uid: str | None) -> None:
        if not uid:
            return
        now = time.monotonic()
        self._gone[uid] = now
        if len(self._gone) > 1000:
            self._gone = {u: t for u, t in self._gone.items() if now - t < GONE_SECONDS}

    def replace(self, objs: list[Manifest], version: int | None, namespace: str | None = None) -> list[Manifest]:
        """A fresh LIST at `version` (of one namespace, or of all when None): the store becomes exactly that,
        except for newer versions the operator wrote meanwhile. Returns what changed, gone objects included."""
        with self._lock:
            listed = {_key(o): o for o in objs}
            changed = []
            for key, old in list(self._objects.items()):
                if namespace is not None and key[0] != namespace:
                    continue
                v = _version(old)
                if key not in listed and not (version is not None and v is not None and v > version):
                    self._drop(key)
                    changed.append(old)
            for key, obj in listed.items():
                kept = self._objects.get(key)
                if kept is None or not _older(obj, kept):
                    self._put(obj)
                changed.append(obj)
            return changed

    def _put(self, obj: Manifest) -> None:
        # Nothing of the operator reads managedFields (often half of an object's size), nor the trainer's
        # config that each worker pod carries (workers.py): the job's spec is in the job.
        obj["metadata"].pop("managedFields", None)
        (obj["metadata"].get("annotations") or {}).pop(CONFIG_ANNOTATION, None)
        key = _key(obj)
        if key in self._objects:
            self._unindex(key)
        self._objects[key] = obj
        if self._index_of is not None and (value := self._index_of(obj)) is not None:
            self._index[(key[0], value)].add(key[1])

    def _drop(self, key: Key) -> None:
        self._unindex(key)
        del self._objects[key]

    def _unindex(self, key: Key) -> None:
        if self._index_of is None:
            return
        value = self._index_of(self._objects[key])
        if value is not None:
            names = self._index.get((key[0], value))
            if names is not None:
                names.discard(key[1])
                if not names:
                    del self._index[(key[0], value)]


@dataclass(frozen=True)
class View:
    """What a reconcile reads: every FineTuneJob, and every worker pod by its job."""

    jobs: Store
    pods: Store  # indexed by the kubetune.io/job-name label

    def ready(self) -> bool:
        return self.jobs.synced.is_set() and self.pods.synced.is_set()


class Informer:
    """Threads keeping a `Store` of one resource by LIST + WATCH, calling `on_change(obj)` for each change.

    `list_calls` maps a namespace (None: the whole cluster) to a list method of the API client with that
    namespace bound; each is called with `_preload_content=False`, so objects stay plain JSON, and runs in
    a thread of its own. The store is synced once every one of them has listed.
    """

    def __init__(self, name: str, list_calls: dict[str | None, Callable[..., Any]], store: Store,
                 on_change: Callable[[Manifest], None], label_selector: str = "") -> None:
        self.name, self.store = name, store
        self.on_change, self.label_selector = on_change, label_selector
        self.stopped = threading.Event()
        self._pending = set(list_calls)
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(ns, call), name=f"kubetune-informer-{name}",
                                          daemon=True) for ns, call in list_calls.items()]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self.stopped.set()

    def _run(self, namespace: str | None, call: Callable[..., Any]) -> None:
        version: str | None = None
        while not self.stopped.is_set():
            try:
                if version is None:
                    version = self._list(namespace, call)
                    with self._lock:
                        self._pending.discard(namespace)
                        if not self._pending:
                            self.store.synced.set()
                version = self._watch(call, version)
            except ApiException as e:
                if e.status == 410:
                    log.info("informer %s: version %s too old; listing again", self.name, version)
                else:
                    log.warning("informer %s: %s %s; listing again in %.0f s", self.name, e.status, e.reason,
                                RETRY_SECONDS)
                    self.stopped.wait(RETRY_SECONDS)
                version = None
            except Exception as e:  # a dropped connection, a server restart: list again
                log.warning("informer %s: %s; listing again in %.0f s", self.name, e, RETRY_SECONDS)
                self.stopped.wait(RETRY_SECONDS)
                version = None

    def _list(self, namespace: str | None, call: Callable[..., Any]) -> str:
        objs: list[Manifest] = []
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"limit": PAGE_SIZE, "_preload_content": False}
            if self.label_selector:
                kwargs["label_selector"] = self.label_selector
            if token:
                kwargs["_continue"] = token
            page = json.loads(call(**kwargs).data)
            objs += page["items"]
            token = page["metadata"].get("continue")
            if not token:
                break
        version: str = page["metadata"]["resourceVersion"]
        kind = page.get("kind", "").removesuffix("List")
        for obj in objs:  # list items carry no kind
            obj.setdefault("kind", kind)
        for obj in self.store.replace(objs, int(version) if version.isdigit() else None, namespace):
            self._notify(obj)
        return version

    def _watch(self, call: Callable[..., Any], version: str) -> str:
        kwargs: dict[str, Any] = {"watch": True, "resource_version": version, "allow_watch_bookmarks": True,
                                  "timeout_seconds": WATCH_SECONDS, "_preload_content": False,
                                  "_request_timeout": (10, WATCH_SECONDS + 30)}
        if self.label_selector:
            kwargs["label_selector"] = self.label_selector
        resp = call(**kwargs)
        try:
            for line in iter_resp_lines(resp):
                if self.stopped.is_set():
                    break
                event = json.loads(line)
                kind, obj = event["type"], event["object"]
                if kind == "ERROR":
                    raise ApiException(status=obj.get("code", 500), reason=obj.get("message", ""))
                version = obj["metadata"].get("resourceVersion") or version
                if kind == "BOOKMARK":
                    continue
                changed = self.store.remove(obj) if kind == "DELETED" else self.store.write(obj)
                if changed:
                    self._notify(obj)
        finally:
            resp.release_conn()
        return version

    def _notify(self, obj: Manifest) -> None:
        try:
            self.on_change(obj)
        except Exception:  # a bug in one callback must not stop the view
            log.exception("informer %s: handling a change of %s failed", self.name, _key(obj))


class WorkQueue:
    """Keys to process by a pool of threads; a key added again while it waits is queued once.

    `add_after` holds a key back for a moment first, so that a burst of changes (the pods of one job
    turning Running one after the other) costs one pass, as the Job controller batches pod events.
    """

    def __init__(self, work: Callable[[Key], None], workers: int, name: str = "reconcile") -> None:
        self.work = work
        self._waiting: dict[Key, None] = {}  # insertion-ordered set
        self._later: dict[Key, float] = {}  # held back until this time.monotonic()
        self._cond = threading.Condition()
        self._stopped = False
        self._threads = [threading.Thread(target=self._run, name=f"kubetune-{name}-{i}", daemon=True)
                         for i in range(workers)]
        self._threads.append(threading.Thread(target=self._release, name=f"kubetune-{name}-later", daemon=True))

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def add(self, key: Key) -> None:
        with self._cond:
            self._later.pop(key, None)
            if key not in self._waiting:
                self._waiting[key] = None
                self._cond.notify_all()

    def add_after(self, key: Key, seconds: float) -> None:
        with self._cond:
            if key in self._waiting or key in self._later:
                return  # it runs no later than already planned, and sees this change too
            self._later[key] = time.monotonic() + seconds
            self._cond.notify_all()

    def __len__(self) -> int:
        return len(self._waiting) + len(self._later)

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    def _release(self) -> None:
        with self._cond:
            while not self._stopped:
                now = time.monotonic()
                for key, due in list(self._later.items()):
                    if due <= now:
                        del self._later[key]
                        self._waiting.setdefault(key, None)
                        self._cond.notify_all()
                self._cond.wait(min(self._later.values(), default=now + 60) - now)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self._stopped:
                    self._cond.wait()
                if self._stopped:
                    return
                key = next(iter(self._waiting))
                del self._waiting[key]
            try:
                self.work(key)
            except Exception:  # one job's failure must not stop the queue
                log.exception("processing %s/%s failed", *key)
