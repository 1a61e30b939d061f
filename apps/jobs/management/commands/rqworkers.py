"""Several rqworkers as one service, forked from one process that has loaded what they share.

    python manage.py rqworkers clone "default purge deploy" --poolmanager

Each argument is one worker and the queues it serves, in its order of preference; the
worker serving ``default`` hosts the pool manager's loop with ``--poolmanager``. Every
worker is `manage.py rqworker` (its niceness, its SimpleWorker, its signals), started by
``fork`` after this process has imported Django, every app's ``jobs`` module, RQ and pyVmomi
and frozen them out of the garbage collector's reach (``gc.freeze``): the workers share
those pages until they write them: bench/memory.py, README step 3 on a small host, 217 MB
of PSS against 235 with the same two workers as processes of their own, and ~25 MB for
each further clone worker instead of ~69.

The parent only supervises: SIGTERM or SIGINT is passed on to every worker (RQ's warm
shutdown: each finishes its job first; a second one is its cold shutdown) and it exits
when they all have; a worker that exits otherwise, or is killed, is forked again, after a
pause that grows while it keeps dying young (up to 10 s: RQ's workers exit while Redis is
down). A worker dies with the parent (Linux's parent-death signal), so a ``kill -9`` of the
parent leaves no worker behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import os
import signal
import sys
import time
from argparse import ArgumentParser
from typing import Any

from django.conf import settings
from django.core.management import call_command, load_command_class
from django.core.management.base import BaseCommand, CommandError
from django.db import connections
from django.utils.module_loading import autodiscover_modules

from apps.jobs.apps import STARTUP_CHECKS

log = logging.getLogger("vmportal.rqworkers")
PR_SET_PDEATHSIG = 1
# A worker that ran this long was not dying young: its replacement starts at once. One that
# did waits 1, 2, 4, 8, then 10 s (Redis down: the workers exit, and are back within 10 s of it).
HEALTHY_AFTER = 30.0
MAX_PAUSE = 10.0
POLL = 0.2
SIGNALS = {signal.SIGTERM, signal.SIGINT}


def _load_shared() -> None:
    """Import what every worker runs, so that it is loaded once, before the fork."""
    import _strptime  # type: ignore[import-not-found]  # noqa: F401  # what rq's first datetime parse imports
    import encodings.idna  # noqa: F401  # what the first connection by host name imports

    from pyVmomi import vim, vmodl

    # With the pool manager's loop, django-rq's command and its workers, and RQ.
    load_command_class("apps.jobs", "rqworker")
    autodiscover_modules("jobs")
    # pyVmomi makes its types on first use; these are the ones clone, destroy and the
    # property collector's watch touch in every job.
    for name in ("VirtualMachine", "Task", "Folder", "HostSystem", "ClusterComputeResource", "Datastore",
                 "ResourcePool", "ServiceInstance", "TaskInfo"):
        getattr(vim, name)
    for spec in (vim.vm.CloneSpec, vim.vm.RelocateSpec, vim.vm.ConfigSpec, vmodl.query.PropertyCollector.FilterSpec):
        spec()


class Command(BaseCommand):
    help = __doc__.splitlines()[0]
    requires_system_checks = STARTUP_CHECKS

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("workers", nargs="+", metavar="QUEUES",
                            help='one worker per argument, serving its queues (space- or comma-separated), '
                                 'e.g. clone "default purge deploy"')
        parser.add_argument("--poolmanager", action="store_true",
                            help="run the pool manager's loop in the worker that serves the default queue")
        parser.add_argument("--poolmanager-interval", type=float, default=None,
                            help="its seconds between full cycles")
        parser.add_argument("--worker-class", default="rq.SimpleWorker",
                            help="RQ worker class of every worker (default rq.SimpleWorker)")

    def handle(self, *args: Any, **options: Any) -> None:
        groups = [arg.replace(",", " ").split() for arg in options["workers"]]
        unknown = sorted({q for group in groups for q in group} - set(settings.RQ_QUEUES))
        if unknown or not all(groups):
            raise CommandError(f"Unknown or empty queue list: {', '.join(unknown) or repr('')}. "
                               f"Queues: {', '.join(settings.RQ_QUEUES)}.")
        host = next((i for i, group in enumerate(groups) if "default" in group), None)
        if options["poolmanager"] and host is None:
            raise CommandError("--poolmanager runs in the worker that serves the default queue; none does.")
        argvs, labels = [], []  # each worker's rqworker arguments, and its queues for the log
        for i, group in enumerate(groups):
            argv = [*group, "--worker-class", options["worker_class"], "--verbosity", str(options["verbosity"])]
            label = " ".join(group)
            if options["poolmanager"] and i == host:
                argv.append("--poolmanager")
                if options["poolmanager_interval"] is not None:
                    argv += ["--poolmanager-interval", str(options["poolmanager_interval"])]
                label += " +poolmanager"
            argvs.append(argv)
            labels.append(label)
        _load_shared()
        connections.close_all()  # each worker opens its own
        gc.collect()
        gc.freeze()
        sys.exit(Supervisor(argvs, labels).run())


class Supervisor:
    def __init__(self, argvs: list[list[str]], labels: list[str]):
        self.argvs = argvs
        self.labels = labels  # for the log: each worker's queues
        self.children: dict[int, tuple[int, float]] = {}  # pid: (worker index, started at)
        self.stopping = False

    def forward(self, signum: int, frame: object) -> None:
        self.stopping = True
        for pid in self.children:
            with contextlib.suppress(ProcessLookupError):  # gone, not yet waited for
                os.kill(pid, signum)

    def spawn(self, index: int) -> None:
        # Blocked across the fork: a signal then reaches the child only once it has its own
        # handlers, and the parent only once it knows the child's pid.
        signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
        pid = os.fork()
        if pid == 0:
            os._exit(self.child(self.argvs[index], self.labels[index]))
        self.children[pid] = (index, time.monotonic())
        signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
        log.info("worker %d (%s) started as pid %d", index + 1, self.labels[index], pid)

    def child(self, argv: list[str], label: str) -> int:
        # A session (and so a process group) of its own: a terminal's Ctrl-C, or a kill of
        # the parent's group, reaches the worker once, through the parent (RQ takes a second
        # signal for a cold shutdown, which ends the running job at once); and rqworker can
        # lower its session's autogroup (VMPORTAL_WORKER_NICE) without lowering the others'.
        os.setsid()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
        parent = os.getppid()
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before the line above
            return 1
        try:
            call_command("rqworker", *argv)
        except SystemExit as exc:
            return exc.code if isinstance(exc.code, int) else int(exc.code is not None)
        except BaseException:
            log.exception("worker (%s) stopped on an error", label)
            return 1
        finally:
            logging.shutdown()
        return 0

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.forward)
        signal.signal(signal.SIGINT, self.forward)
        due = dict.fromkeys(range(len(self.argvs)), 0.0)  # worker index: when to fork it
        pauses = [0.0] * len(self.argvs)
        while self.children or (due and not self.stopping):
            for index, at in list(due.items()):
                if not self.stopping and at <= time.monotonic():
                    del due[index]
                    self.spawn(index)
            pid, status = os.waitpid(-1, os.WNOHANG) if self.children else (0, 0)
            if pid == 0:
                time.sleep(POLL)
                continue
            index, started = self.children.pop(pid)
            if self.stopping:
                continue
            ran = time.monotonic() - started
            pauses[index] = 0.0 if ran >= HEALTHY_AFTER else min(MAX_PAUSE, max(1.0, pauses[index] * 2))
            due[index] = time.monotonic() + pauses[index]
            log.warning("worker %d (%s, pid %d) %s after %.0f s; starting it again in %.0f s", index + 1,
                        self.labels[index], pid, _how(status), ran, pauses[index])
        return 0


def _how(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"was killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exited with {os.WEXITSTATUS(status)}"
