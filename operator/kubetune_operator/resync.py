"""The resync loop: jobs are reconciled again when their last plan said so.

Events drive nearly everything; this loop catches what no event announces (an
active deadline passing, a TTL expiring, a wait for workers) and, every
SAFETY_RESYNC_SECONDS, anything an event handler missed. Every
KUBETUNE_RESYNC_SECONDS it asks the Reconciler for the jobs that are due (one
LIST of all jobs) and reconciles them in a bounded pool; a job running
steadily costs nothing.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor

from kubernetes.client.rest import ApiException

from .reconcile import Reconciler
from .settings import Settings

log = logging.getLogger(__name__)


class ResyncLoop:
    def __init__(self, reconciler: Reconciler, settings: Settings) -> None:
        self.reconciler, self.settings = reconciler, settings
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
                    due = self.reconciler.jobs_due(self.settings.namespaces)
                except ApiException as e:
                    log.warning("resync: listing FineTuneJobs failed: %s %s", e.status, e.reason)
                    continue
                for future in [pool.submit(self._one, namespace, name) for namespace, name in due]:
                    future.result()

    def _one(self, namespace: str, name: str) -> None:
        try:
            self.reconciler.reconcile(namespace, name)
        except ApiException as e:
            log.warning("resync of %s/%s failed: %s %s; the next round retries", namespace, name, e.status, e.reason)
        except Exception:  # a bug must not stop the loop for every other job
            log.exception("resync of %s/%s failed", namespace, name)
