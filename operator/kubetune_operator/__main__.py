"""`python -m kubetune_operator`: run the FineTuneJob operator against the current cluster.

Any number of replicas may run: they elect one through a Lease (leadership.py).
A standby only answers its probes and waits; the leader runs kopf's handlers
and the resync loop; a leader that loses the Lease exits at once (its pod's
container restarts and stands by). `--standalone` skips the election and acts
at once: for development, never beside another replica.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import logging
import os
import signal
import sys
import threading
import time

import kopf

from . import metrics
from . import settings as settings_module
from .health import Check, HealthEndpoint
from .leadership import LeaderElector, LeaseTimings

log = logging.getLogger("kubetune_operator")

LOOP_ANSWER_SECONDS = 3.0  # a live leader's event loop runs a no-op within this
SIGNAL_HANDOVER_SECONDS = 1.0  # kopf has installed its signal handlers this long after its loop started


class StopSignal:
    """SIGTERM or SIGINT, caught from the start until kopf installs its own handlers."""

    def __init__(self) -> None:
        self.caught = threading.Event()
        self.signum = signal.SIGTERM
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._catch)

    def _catch(self, signum: int, _frame: object) -> None:
        self.signum = signal.Signals(signum)
        self.caught.set()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kubetune_operator", description=__doc__,
        epilog=settings_module.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--standalone", action="store_true",
                        help="act at once, without leader election (development; never beside another replica)")
    args = parser.parse_args(argv)
    config = settings_module.Settings.from_env()
    # kopf's formatter prefixes what its handlers log with the object: "[ml/support-bot] ...".
    kopf.configure(log_format=kopf.LogFormat.FULL, log_prefix=True,
                   debug=config.log_level == "DEBUG")
    logging.getLogger().setLevel(config.log_level)
    from . import handlers  # registers the handlers

    loop = asyncio.new_event_loop()
    kopf_ready, stop = threading.Event(), StopSignal()
    if config.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(config.metrics_port)

    if args.standalone:
        metrics.LEADER.set(1)
        _serve_probes(config, live=lambda: _loop_answers(loop),
                      ready=lambda: None if kopf_ready.is_set() else "the operator is starting")
        _run_kopf(config, loop, kopf_ready, stop)
        return 0

    timings = LeaseTimings(config.lease_duration_seconds, config.renew_deadline_seconds, config.retry_period_seconds)
    elector = LeaderElector(handlers.api_client(pool_size=2), config.lease_name, config.lease_namespace, timings)
    elector.last_attempt = time.monotonic()

    def live() -> str | None:
        if elector.leading:
            return _loop_answers(loop)
        idle = time.monotonic() - elector.last_attempt
        limit = 3 * timings.retry_period + 10  # an attempt's request times out after a retry period
        return None if idle < limit else f"standing by, but the Lease was not tried for {idle:.0f} s"

    def ready() -> str | None:
        silent = time.monotonic() - elector.last_contact
        limit = timings.renew_deadline if elector.leading else timings.lease_duration
        return None if silent < limit else f"the Lease could not be read for {silent:.0f} s (API server unreachable?)"

    _serve_probes(config, live, ready)
    log.info("standing by for the Lease %s as %s", elector.lease, elector.identity)
    if not elector.acquire(stop.caught):
        log.info("stopped while standing by")
        return 0
    if stop.caught.is_set():  # a signal just as the Lease was won
        elector.release()
        return 0
    elector.keep_renewing(lost=_stop_acting_now)
    try:
        _run_kopf(config, loop, kopf_ready, stop)
    finally:
        elector.release()
    return 0


def _run_kopf(config: settings_module.Settings, loop: asyncio.AbstractEventLoop, ready: threading.Event,
              stop: StopSignal) -> None:
    """kopf's handlers and (started by them) the resync loop, until SIGTERM or SIGINT.

    When it returns nothing of the operator acts any more: no handler, no reconcile, no resync."""
    from . import handlers

    def resend_missed_signal() -> None:
        # A signal that came before kopf listened (only ours sets `caught`): once more, for kopf.
        if stop.caught.is_set():
            os.kill(os.getpid(), stop.signum)

    loop.call_later(SIGNAL_HANDOVER_SECONDS, resend_missed_signal)
    settings, memo = kopf.OperatorSettings(), kopf.Memo()  # the `configure` startup handler fills them in
    try:
        kopf.run(loop=loop, settings=settings, memo=memo, standalone=True, clusterwide=not config.namespaces,
                 namespaces=config.namespaces, ready_flag=ready)
    finally:
        # kopf returns once its tasks end, but a sync handler cancelled half-way runs on in
        # its thread (even `configure`, which starts the resync loop): wait for them, then stop it.
        settings.execution.executor.shutdown(wait=True)
        handlers.stop_resync_loop(memo)


def _serve_probes(config: settings_module.Settings, live: Check, ready: Check) -> None:
    if config.health_port:
        HealthEndpoint(config.health_port, live, ready).start()


def _loop_answers(loop: asyncio.AbstractEventLoop) -> str | None:
    if not loop.is_running():
        return "the operator's event loop is not running"
    try:
        asyncio.run_coroutine_threadsafe(asyncio.sleep(0), loop).result(timeout=LOOP_ANSWER_SECONDS)
    except concurrent.futures.TimeoutError:
        return f"the operator's event loop did not answer within {LOOP_ANSWER_SECONDS:g} s"
    return None


def _stop_acting_now(why: str) -> None:
    """Leadership is lost: end the process before it does one more thing (controller-runtime does the same)."""
    log.error("leadership lost: %s; exiting at once, so that this replica and the new leader never both act", why)
    for handler in logging.getLogger().handlers:
        handler.flush()
    os._exit(1)


if __name__ == "__main__":
    sys.exit(main())
