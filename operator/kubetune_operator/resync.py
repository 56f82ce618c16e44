"""The resync loop: jobs are reconciled again when their last plan said so.

Events drive nearly everything; this loop catches what no event announces (an
active deadline passing, a TTL expiring, a wait for workers) and, every
SAFETY_RESYNC_SECONDS, anything an event handler missed. Every
KUBETUNE_RESYNC_SECONDS it makes one LIST of all jobs and reconciles, in a
bounded pool, those that are due; a job running steadily costs nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from kubernetes.client.rest import ApiException

from kubetune_api.constants import TERMINAL_PHASES

from . import metrics
from .kube import Kube
from .reconcile import forget_all_but, is_due, reconcile
from .settings import Settings

log = logging.getLogger(__name__)


def needs_resync(job: dict[str, Any]) -> bool:
    """Unfinished jobs, and finished ones that still wait for their TTL."""
    finished = (job.get("status") or {}).get("phase") in TERMINAL_PHASES
    ttl = ((job.get("spec") or {}).get("runPolicy") or {}).get("ttlSecondsAfterFinished")
    return not finished or ttl is not None


class ResyncLoop:
    def __init__(self, kube: Kube, settings: Settings) -> None:
        self.kube, self.settings = kube, settings
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="kubetune-resync", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=30)

    def _run(self) -> None:
        with ThreadPoolExecutor(self.settings.workers, thread_name_prefix="kubetune-resync") as pool:
            while not self.stopped.wait(self.settings.resync_seconds):
                try:
                    jobs = self.kube.list_jobs(self.settings.namespaces)
                except ApiException as e:
                    log.warning("resync: listing FineTuneJobs failed: %s %s", e.status, e.reason)
                    continue
                present = {(j["metadata"]["namespace"], j["metadata"]["name"]) for j in jobs}
                metrics.keep_only(present)
                forget_all_but(present)
                now = time.monotonic()
                due = [j["metadata"] for j in jobs if needs_resync(j)
                       and is_due(j["metadata"]["namespace"], j["metadata"]["name"], now)]
                for future in [pool.submit(self._one, m["namespace"], m["name"]) for m in due]:
                    future.result()

    def _one(self, namespace: str, name: str) -> None:
        try:
            reconcile(self.kube, namespace, name, self.settings.trainer_image)
        except ApiException as e:
            log.warning("resync of %s/%s failed: %s %s; the next round retries", namespace, name, e.status, e.reason)
        except Exception:  # a bug must not stop the loop for every other job
            log.exception("resync of %s/%s failed", namespace, name)
