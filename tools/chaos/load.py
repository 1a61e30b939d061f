"""vmpooler-API clients: checkout (POST /api/v3/vm/<pool>) and return (DELETE
/api/v3/vm/<host>) in a loop, with kept-alive connections, counting 5xx answers and VMs
handed out twice."""

from __future__ import annotations

import http.client
import json
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

HOST = "127.0.0.1"


def is_server_error(status: int, body: bytes) -> bool:
    """A 5xx other than the API's own clear 503 (vmpooler's "no VM ready", or "Redis is
    down, try again"): those are JSON with ok: false and a reason, and are the contract."""
    if status < 500:
        return False
    if status == 503:
        try:
            data = json.loads(body)
        except ValueError:
            return True
        return not (isinstance(data, dict) and data.get("ok") is False and data.get("error"))
    return True


class Api:
    """One client: a kept-alive connection and a token."""

    def __init__(self, port: int, token: str, stats: Stats):
        self.port, self.token, self.stats = port, token, stats
        self.conn = http.client.HTTPConnection(HOST, port, timeout=60)

    def call(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"X-AUTH-TOKEN": self.token, "Host": f"{HOST}:{self.port}"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        for attempt in (1, 2):
            try:
                self.conn.request(method, path, body=data, headers=headers)
                response = self.conn.getresponse()
                raw = response.read()
                break
            except (http.client.HTTPException, OSError) as exc:
                self.conn.close()
                self.conn = http.client.HTTPConnection(HOST, self.port, timeout=60)
                if attempt == 2:
                    self.stats.note("transport", f"{method} {path}: {exc!r}")
                    return 0, {}
                self.stats.note("retried", f"{method} {path}: {exc!r}")
        self.stats.count(method, path, response.status, raw)
        try:
            return response.status, json.loads(raw)
        except ValueError:
            return response.status, {}

    def checkout(self, pool: str) -> str | None:
        status, data = self.call("POST", f"/api/v3/vm/{pool}")
        if status == 200:
            host = data.get(pool, {}).get("hostname")
            return host if isinstance(host, str) else None
        return None

    def give_back(self, hostname: str) -> bool:
        status, _ = self.call("DELETE", f"/api/v3/vm/{hostname}")
        return status == 200

    def close(self) -> None:
        self.conn.close()


@dataclass
class Stats:
    """Answers by status, 5xx other than clear 503s, and hostnames handed out twice."""

    statuses: Counter = field(default_factory=Counter)
    errors_5xx: list[str] = field(default_factory=list)
    transport: list[str] = field(default_factory=list)
    # Requests sent again on a new connection after the first failed (kept-alive connection
    # closed by the server, or a reset): harmless to the loop, but counted.
    retried: list[str] = field(default_factory=list)
    checkouts: int = 0
    returns: int = 0
    duplicates: list[str] = field(default_factory=list)
    _seen: dict[str, int] = field(default_factory=dict)  # hostname -> client that got it first
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, method: str, path: str, status: int, body: bytes) -> None:
        with self._lock:
            self.statuses[status] += 1
            if is_server_error(status, body):
                self.errors_5xx.append(f"{method} {path} -> {status}: {body[:160]!r}")

    def note(self, kind: str, message: str) -> None:
        with self._lock:
            (self.retried if kind == "retried" else self.transport).append(message)

    def handed(self, hostname: str, client: int) -> None:
        """A VM is leased at most once, ever: a hostname handed out a second time is doubled."""
        with self._lock:
            self.checkouts += 1
            if hostname in self._seen:
                self.duplicates.append(f"{hostname}: client {self._seen[hostname]} and client {client}")
            else:
                self._seen[hostname] = client

    def summary(self) -> str:
        codes = ", ".join(f"{k}: {v}" for k, v in sorted(self.statuses.items()))
        return (f"{self.checkouts} checkouts, {self.returns} returns; answers {codes}; "
                f"5xx (not a clear 503) {len(self.errors_5xx)}; doubled {len(self.duplicates)}; "
                f"connection failures {len(self.transport)}")


class Loop:
    """``clients`` threads, each with its own token, checking out and returning until stopped."""

    def __init__(self, port: int, tokens: list[str], pools: list[str], *, clients: int, hold: float = 0.0,
                 pause: float = 0.0, stats: Stats | None = None):
        self.port, self.tokens, self.pools = port, tokens, pools
        self.clients, self.hold, self.pause = clients, hold, pause
        self.stats = stats or Stats()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True, name=f"client-{i}")
                         for i in range(clients)]

    def _run(self, index: int) -> None:
        api = Api(self.port, self.tokens[index % len(self.tokens)], self.stats)
        rnd = random.Random(index)
        try:
            while not self._stop.is_set():
                host = api.checkout(rnd.choice(self.pools))
                if host is None:
                    self._stop.wait(0.05 + self.pause)  # empty pool (503) or an error: try again shortly
                    continue
                self.stats.handed(host, index)
                if self.hold:
                    self._stop.wait(rnd.uniform(0, self.hold))
                # Give it back even when stopping: a client does not walk away with a VM.
                for _ in range(5):
                    if api.give_back(host):
                        with self.stats._lock:
                            self.stats.returns += 1
                        break
                    time.sleep(0.5)
                if self.pause:
                    self._stop.wait(self.pause)
        finally:
            api.close()

    def start(self) -> Loop:
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> Stats:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=60)
        return self.stats
