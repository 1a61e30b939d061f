"""The processes a chaos run owns: its own redis-server (so it can kill it and bring it back
empty), the simulator (tests/vcsim.py), gunicorn, the pool manager and rqworkers.

A small supervisor restarts a worker, pool manager or web process that exited, as systemd's
Restart=always would on a real host: the harness kills processes, it does not leave the
system without workers.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process {proc.args[0]} exited with {proc.returncode} before port {port} opened")
        try:
            with socket.create_connection((HOST, port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"nothing listens on {HOST}:{port} after {timeout:.0f}s")


@dataclass
class Managed:
    """One supervised process: started in its own process group, logged to a file."""

    name: str
    argv: list[str]
    log_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    supervised: bool = True
    proc: subprocess.Popen | None = None
    starts: int = 0

    def start(self) -> Managed:
        log = open(self.log_dir / f"{self.name}.log", "ab")  # noqa: SIM115 - the child keeps it
        self.proc = subprocess.Popen(self.argv, cwd=ROOT, env={**os.environ, **self.env}, stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self.starts += 1
        return self

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        """SIGKILL the whole process group: no handler runs, nothing is cleaned up."""
        if self.alive():
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self, timeout: float = 10) -> None:
        if not self.alive():
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill9()


class Supervisor:
    """Restarts supervised processes that exited, a second after they did."""

    def __init__(self) -> None:
        self.procs: list[Managed] = []
        self.restarts: list[tuple[float, str, int | None]] = []  # (monotonic time, name, exit code)
        self.paused: set[str] = set()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._watch, daemon=True, name="supervisor")

    def add(self, proc: Managed) -> Managed:
        with self._lock:
            self.procs.append(proc)
        return proc.start()

    def by_name(self, name: str) -> Managed:
        return next(p for p in self.procs if p.name == name)

    def run(self) -> None:
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(1.0):
            with self._lock:
                for p in self.procs:
                    if p.supervised and p.name not in self.paused and p.proc is not None and p.proc.poll() is not None:
                        self.restarts.append((time.monotonic(), p.name, p.proc.returncode))
                        p.start()

    def stop_all(self) -> None:
        self._stop.set()
        with self._lock:
            for p in reversed(self.procs):
                p.stop()


class RedisServer:
    """A redis-server of our own, without persistence: a restart comes back empty."""

    def __init__(self, log_dir: Path, port: int | None = None):
        self.port = port or free_port()
        self.log_dir = log_dir
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def start(self) -> None:
        log = open(self.log_dir / "redis.log", "ab")  # noqa: SIM115 - the child keeps it
        self.proc = subprocess.Popen(
            ["redis-server", "--bind", HOST, "--port", str(self.port), "--save", "", "--appendonly", "no",
             "--dir", str(self.log_dir)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        wait_for_port(self.port, 20, self.proc)

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill9()


def manage(name: str, *args: str, log_dir: Path, env: dict[str, str] | None = None) -> Managed:
    return Managed(name, [sys.executable, str(ROOT / "manage.py"), *args], log_dir, env or {})


def gunicorn(port: int, *, log_dir: Path, workers: int = 2, threads: int = 8) -> Managed:
    # As `make demo` serves it (gthread), with more threads: 32 clients keep connections alive.
    return Managed("web", [sys.executable, "-m", "gunicorn", "vmportal.wsgi", "--bind", f"{HOST}:{port}",
                           "--workers", str(workers), "--worker-class", "gthread", "--threads", str(threads),
                           "--keep-alive", "30", "--log-level", "warning", "--timeout", "60"], log_dir)
