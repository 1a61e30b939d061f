"""Starting and stopping the project's vSphere simulator (tools/vcsim) for tests and benches."""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
BINARY = ROOT / "tools" / "vcsim" / "bin" / "vcsim"
USERNAME = "vmportal"
PASSWORD = "sim-secret"  # noqa: S105 - the simulator's own throwaway credential


@dataclass
class Vcsim:
    host: str
    port: int
    username: str
    password: str
    process: subprocess.Popen = field(repr=False)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def build() -> None:
    subprocess.run(["bash", str(ROOT / "tools" / "vcsim" / "build.sh")], check=True)


def start(*flags: str, listen: str = "127.0.0.1:0", timeout: float = 120.0, own_session: bool = False) -> Vcsim:
    """Start a simulator on a free port and wait until it prints its URL."""
    if not BINARY.exists():
        build()
    proc = subprocess.Popen(
        [str(BINARY), "-l", listen, "-username", USERNAME, "-password", PASSWORD, *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL if not os.environ.get("VCSIM_STDERR") else None,
        text=True,
        start_new_session=own_session,
    )
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"vcsim exited with {proc.returncode} before it was ready")
        if sel.select(timeout=0.5):
            line = proc.stdout.readline()
            if line.startswith("VCSIM_URL="):
                url = urlsplit(line.split("=", 1)[1].strip())
                return Vcsim(url.hostname, url.port, USERNAME, PASSWORD, proc)
    proc.kill()
    raise RuntimeError(f"vcsim did not become ready within {timeout:.0f}s")
