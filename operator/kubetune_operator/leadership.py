"""Leader election through a coordination.k8s.io/v1 Lease: of all replicas, one acts.

Why: the chart runs two replicas so that a lost node, an eviction or a rolling
update stops reconciles for seconds, not for as long as a new pod takes to be
scheduled and started. Two replicas acting at once would both restart a gang,
both count it and both create workers; so exactly one may act. A Lease is how
kube-controller-manager, kube-scheduler and controller-runtime operators elect
theirs: it needs nothing but the core API (no CRD of its own, unlike kopf's
peering), and RBAC can name the one object (resourceNames).

The protocol is client-go's leaderelection package:
- A candidate reads the Lease every retry period. It may take the Lease when no
  one holds it, or when the record has not changed for leaseDurationSeconds as
  this process observed it: its own monotonic clock, never another machine's
  timestamps. It writes itself as holder with an update that carries the
  resourceVersion it read, so of two candidates exactly one wins.
- The leader renews (renewTime) every retry period. When it finds another
  holder, or has not renewed for the renew deadline, it has lost and must stop
  acting at once: `LeaderElector.keep_renewing` calls its `lost` callback,
  which ends the process (as controller-runtime does). The renew deadline is
  shorter than the lease duration, so the old leader is gone before a standby
  may take over.
- On a clean stop the leader releases the Lease (no holder, duration 1 s)
  after it has stopped acting, so a standby takes over within a retry period
  instead of a lease duration.

This module is the operator's second door to the API server, apart from kube.py
(the reconciles'): a Lease is not a FineTuneJob's business, and its requests
must not queue behind a burst of reconciles. The decision itself
(`record_to_write`) is a pure function of what was read and observed.
"""

from __future__ import annotations

import json
import logging
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from kubetune_api import Manifest

from . import metrics

log = logging.getLogger(__name__)

JITTER = 0.2  # a candidate waits retry_period x (1 .. 1.2), so candidates do not try in lockstep


def micro_now() -> str:
    """Now as a Lease's MicroTime: RFC 3339 with exactly six fraction digits (the API server insists)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def default_identity() -> str:
    """The pod's name (a pod's hostname) and a random suffix, unique across restarts, as client-go's."""
    return f"{socket.gethostname()}_{uuid.uuid4()}"


@dataclass(frozen=True)
class LeaseTimings:
    """The three durations of leader election (seconds); lease_duration > renew_deadline > retry_period."""

    lease_duration: int
    renew_deadline: float
    retry_period: float


@dataclass(frozen=True)
class LeaseRecord:
    """A Lease's spec: who holds it, since when, last renewed when, for how long, how often it changed hands."""

    holder: str = ""
    duration_seconds: int = 0
    acquire_time: str | None = None
    renew_time: str | None = None
    transitions: int = 0

    @classmethod
    def of(cls, lease: Manifest) -> LeaseRecord:
        spec = lease.get("spec") or {}
        return cls(holder=spec.get("holderIdentity") or "", duration_seconds=int(spec.get("leaseDurationSeconds") or 0),
                   acquire_time=spec.get("acquireTime"), renew_time=spec.get("renewTime"),
                   transitions=int(spec.get("leaseTransitions") or 0))

    def spec(self) -> Manifest:
        return {"holderIdentity": self.holder, "leaseDurationSeconds": self.duration_seconds,
                "acquireTime": self.acquire_time, "renewTime": self.renew_time, "leaseTransitions": self.transitions}


def record_to_write(current: LeaseRecord | None, me: str, unchanged_for: float, duration: int,
                    now: str) -> LeaseRecord | None:
    """The record that makes (or keeps) `me` the holder, or None while another holder's term runs.

    `current` is the Lease as read (None: there is none), `unchanged_for` how many seconds this
    process has seen that very record unchanged; a holder's term is its own leaseDurationSeconds.
    """
    if current is None:
        return LeaseRecord(holder=me, duration_seconds=duration, acquire_time=now, renew_time=now)
    if current.holder and current.holder != me and unchanged_for < current.duration_seconds:
        return None
    if current.holder == me:
        return replace(current, duration_seconds=duration, renew_time=now)
    return LeaseRecord(holder=me, duration_seconds=duration, acquire_time=now, renew_time=now,
                       transitions=current.transitions + 1)


def released(current: LeaseRecord, now: str) -> LeaseRecord:
    """What a leader leaves behind on a clean stop: no holder, and a term that is over at once."""
    return LeaseRecord(holder="", duration_seconds=1, acquire_time=now, renew_time=now,
                       transitions=current.transitions)


class LostLease(Exception):
    """Another replica holds the Lease now."""


class LeaderElector:
    """One replica's side of the election for one Lease."""

    def __init__(self, api_client: client.ApiClient, name: str, namespace: str, timings: LeaseTimings,
                 identity: str | None = None) -> None:
        self.api = client.CoordinationV1Api(api_client)
        self.name, self.namespace, self.timings = name, namespace, timings
        self.identity = identity or default_identity()
        self.leading = False
        self.observed: LeaseRecord | None = None
        self.observed_at = 0.0  # time.monotonic() when `observed` was first seen
        self.last_attempt = 0.0  # time.monotonic() of the last attempt, read or write, successful or not
        self.last_contact = 0.0  # time.monotonic() of the last successful read of the Lease
        self.last_renewal = 0.0  # time.monotonic() of the last successful write while leading
        self._stop_renewing = threading.Event()
        self._renewer: threading.Thread | None = None

    @property
    def lease(self) -> str:
        return f"{self.namespace}/{self.name}"

    # ------------------------------------------------------------ one attempt
    def _read(self, timeout: float) -> Manifest | None:
        try:
            response: Any = self.api.read_namespaced_lease(self.name, self.namespace, _preload_content=False,
                                                           _request_timeout=timeout)
        except ApiException as e:
            if e.status == 404:
                return None
            raise
        lease: Manifest = json.loads(response.data)
        return lease

    def try_acquire_or_renew(self, timeout: float) -> bool:
        """Read the Lease and write this replica as its holder if it may; True when it holds it now.

        Raises LostLease when this replica led and another one holds the Lease now; any
        ApiException or OSError when the API server could not be asked (the caller retries).
        """
        self.last_attempt = time.monotonic()
        lease = self._read(timeout)
        now = time.monotonic()
        self.last_contact = now
        current = None if lease is None else LeaseRecord.of(lease)
        if current != self.observed:
            self.observed, self.observed_at = current, now
        if self.leading and current is not None and current.holder != self.identity:
            raise LostLease(f"the Lease {self.lease} is held by {current.holder or 'no one'} now")
        record = record_to_write(current, self.identity, now - self.observed_at, self.timings.lease_duration,
                                 micro_now())
        if record is None:
            return False
        try:
            if lease is None:
                body: Any = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                             "metadata": {"name": self.name, "namespace": self.namespace}, "spec": record.spec()}
                self.api.create_namespaced_lease(self.namespace, body, _preload_content=False,
                                                 _request_timeout=timeout)
            else:
                # The resourceVersion read travels along: a write in between makes this one fail (409).
                body = {**lease, "spec": record.spec()}
                self.api.replace_namespaced_lease(self.name, self.namespace, body, _preload_content=False,
                                                  _request_timeout=timeout)
        except ApiException as e:
            if e.status == 409:  # another candidate wrote first (or created it): read again next time
                return False
            raise
        self.observed, self.observed_at = record, time.monotonic()
        return True

    # ------------------------------------------------------------ standing by
    def acquire(self, stop: threading.Event) -> bool:
        """Stand by until this replica holds the Lease (True) or `stop` is set (False)."""
        waiting_for = None
        while not stop.is_set():
            try:
                if self.try_acquire_or_renew(timeout=self.timings.retry_period):
                    self.leading = True
                    self.last_renewal = time.monotonic()
                    metrics.LEADER.set(1)
                    log.info("leading: this replica (%s) holds the Lease %s; it acts from now on",
                             self.identity, self.lease)
                    return True
                holder = self.observed.holder if self.observed else ""
                if holder != waiting_for:
                    log.info("standing by: the Lease %s is held by %s", self.lease, holder)
                    waiting_for = holder
            except (ApiException, OSError) as e:
                log.warning("standing by: the Lease %s could not be read or written: %s", self.lease, _reason(e))
            stop.wait(self.timings.retry_period * random.uniform(1, 1 + JITTER))
        return False

    # ------------------------------------------------------------ leading
    def keep_renewing(self, lost: Callable[[str], None]) -> None:
        """Renew the Lease every retry period in a thread of its own; call `lost(why)` when leadership is lost."""
        self._renewer = threading.Thread(target=self._renew, args=(lost,), name="kubetune-lease", daemon=True)
        self._renewer.start()

    def _renew(self, lost: Callable[[str], None]) -> None:
        t = self.timings
        while not self._stop_renewing.wait(t.retry_period):
            left = t.renew_deadline - (time.monotonic() - self.last_renewal)
            try:
                if self.try_acquire_or_renew(timeout=max(0.5, min(left, t.renew_deadline / 2))):
                    self.last_renewal = time.monotonic()
                    continue
                why = "a write conflict"
            except LostLease as e:
                self._lose(lost, str(e))
                return
            except (ApiException, OSError) as e:
                why = _reason(e)
            if time.monotonic() - self.last_renewal >= t.renew_deadline:
                self._lose(lost, f"the Lease {self.lease} was not renewed for {t.renew_deadline:g} s "
                                 f"(renew deadline); last error: {why}")
                return
            log.warning("renewing the Lease %s failed (%s); retrying until the renew deadline", self.lease, why)

    def _lose(self, lost: Callable[[str], None], why: str) -> None:
        self.leading = False
        metrics.LEADER.set(0)
        lost(why)

    def release(self) -> None:
        """Stop renewing and, if this replica still holds the Lease, give it up for a standby to take at once.

        Call it only once this replica has stopped acting."""
        self._stop_renewing.set()
        if self._renewer is not None:
            self._renewer.join(timeout=self.timings.renew_deadline)
        if not self.leading:
            return
        self.leading = False
        metrics.LEADER.set(0)
        try:
            lease = self._read(self.timings.retry_period)
            if lease is None or LeaseRecord.of(lease).holder != self.identity:
                return
            body: Any = {**lease, "spec": released(LeaseRecord.of(lease), micro_now()).spec()}
            self.api.replace_namespaced_lease(self.name, self.namespace, body, _preload_content=False,
                                              _request_timeout=self.timings.retry_period)
            log.info("released the Lease %s", self.lease)
        except (ApiException, OSError) as e:  # a standby takes over once the term runs out
            log.warning("releasing the Lease %s failed (%s); a standby takes it over after %d s",
                        self.lease, _reason(e), self.timings.lease_duration)


def _reason(e: Exception) -> str:
    if isinstance(e, ApiException):
        return f"{e.status} {e.reason}"
    return f"{type(e).__name__}: {e}"
