"""`manage.py demo`: the simulator, web server, worker and scheduler in one terminal.

Ctrl-C stops every process it started. A second run reuses the database, users and
pools of the first.
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

from django.conf import settings
from django.core.management import call_command, get_commands
from django.core.management.base import BaseCommand, CommandError

from vmportal.config import env_int, env_str

SIM_USER = "vmportal"
# More restarts of one process than this within a minute means it cannot run: stop, and say so.
RESTARTS_PER_MINUTE = 5


def _interrupt(signum: int, frame: FrameType | None) -> NoReturn:
    # SIGTERM (e.g. from a process manager) stops the demo the same way Ctrl-C does.
    raise KeyboardInterrupt


class Command(BaseCommand):
    help = "Run vmportal with a vSphere simulator, seeded with demo users and pools."

    def handle(self, *args: Any, **options: Any) -> None:
        port = env_int("DEMO_PORT", 8000, minimum=1)
        sim_port = env_int("DEMO_VCSIM_PORT", 18989, minimum=1)
        password = env_str("VMPORTAL_DEMO_PASSWORD", "demo")
        sim_password = env_str("VMPORTAL_DEMO_VCSIM_PASSWORD", "demo-simulator")
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self.argv: dict[str, list[str]] = {}
        signal.signal(signal.SIGTERM, _interrupt)
        try:
            self.start_simulator(sim_port, sim_password)
            call_command(
                "seed_demo", vcsim=f"127.0.0.1:{sim_port}", vcsim_user=SIM_USER,
                vcsim_password=sim_password, password=password,
            )
            manage = [sys.executable, str(Path(settings.BASE_DIR) / "manage.py")]
            self.spawn("web", [
                sys.executable, "-m", "gunicorn", "vmportal.wsgi", "--bind", f"127.0.0.1:{port}",
                "--workers", "1", "--threads", "16", "--log-level", "warning",
            ])
            # README step 3 on a small host: the workers forked from one process (rqworkers),
            # SimpleWorkers that keep vSphere sessions across jobs. A fill job holds its
            # worker while its pool fills, hence two for clone; the scheduler (the pool
            # manager) runs in a thread of the third.
            self.spawn("workers", [*manage, "rqworkers", "clone", "clone", "default purge deploy", "--poolmanager"])
            for name, command in self.optional_daemons():
                self.spawn(name, [*manage, command])
            self.stdout.write(self.style.SUCCESS(
                f"\nvmportal is up: http://127.0.0.1:{port}/\n"
                f"  sign in as admin / {password}  or  engineer / {password}\n"
                f"  simulator: https://127.0.0.1:{sim_port}/sdk (log: {Path(settings.VAR_DIR) / 'vcsim.log'})\n"
                "  Ctrl-C stops everything.\n"
            ))
            self.supervise()
        except KeyboardInterrupt:
            self.stdout.write("\nstopping…")
        finally:
            self.stop_all()

    def optional_daemons(self) -> Iterator[tuple[str, str]]:
        """Long-running commands of other apps, present once those apps provide them."""
        commands = get_commands()
        for name, command in (("watcher", "watch_inventory"),):
            if command in commands:
                yield name, command

    def start_simulator(self, port: int, password: str) -> None:
        binary = Path(settings.BASE_DIR) / "tools" / "vcsim" / "bin" / "vcsim"
        if not binary.exists():
            raise CommandError("The simulator is not built; run `make vcsim` (or `make demo`).")
        state = Path(settings.VAR_DIR) / "vcsim-state"
        proc = self.spawn("vcsim", [
            str(binary), "-l", f"127.0.0.1:{port}", "-username", SIM_USER, "-password", password,
            "-host-stats", "10s", "-guest-ip", "10.20.0.0/16", "-guest-ip-delay", "1s",
            # The simulator's VMs survive a demo restart, like the database's rows do.
            "-save", str(state), "-load", str(state),
        ], stdout=subprocess.PIPE, stderr=open(Path(settings.VAR_DIR) / "vcsim.log", "ab"))  # noqa: SIM115
        out = proc.stdout
        assert out is not None  # stdout=PIPE above
        sel = selectors.DefaultSelector()
        sel.register(out, selectors.EVENT_READ)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise CommandError(
                    f"The simulator exited (code {proc.returncode}); is port {port} in use? "
                    "Set DEMO_VCSIM_PORT to another port."
                )
            if sel.select(timeout=0.5) and out.readline().startswith("VCSIM_URL="):
                return
        raise CommandError("The simulator did not start within 60 s.")

    def spawn(self, name: str, argv: list[str], **kwargs: Any) -> subprocess.Popen:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen(argv, env=env, start_new_session=True, text=True, **kwargs)
        self.procs.append((name, proc))
        self.argv[name] = argv
        return proc

    def supervise(self) -> None:
        """Restart a web server, worker or daemon that exits, as systemd's Restart=always would.

        A worker killed mid-job is part of normal operation (its job is reaped and retried),
        so the demo keeps going; only the simulator is fatal, since its inventory is the demo.
        A process that keeps dying (RESTARTS_PER_MINUTE) stops the demo with its name.
        """
        restarts: dict[str, list[float]] = {}
        while True:
            for i, (name, proc) in enumerate(self.procs):
                if proc.poll() is None:
                    continue
                if name == "vcsim":
                    raise CommandError(f"The simulator exited with code {proc.returncode}; stopping the demo.")
                now = time.monotonic()
                recent = [t for t in restarts.get(name, []) if now - t < 60] + [now]
                restarts[name] = recent
                if len(recent) > RESTARTS_PER_MINUTE:
                    raise CommandError(
                        f"{name} exited {len(recent)} times within a minute (last code {proc.returncode}); "
                        "stopping the demo. Its output is above."
                    )
                self.stdout.write(self.style.WARNING(f"{name} exited with code {proc.returncode}; restarting it."))
                self.procs.pop(i)
                self.spawn(name, self.argv[name])
                break
            time.sleep(1)

    def stop_all(self) -> None:
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for _, proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
