"""A tracking store that fails on cue: a real `mlflow server` (SQLite, proxied artifacts)
behind a small HTTP proxy in this process that counts the writes it passes on and, at write
k, fails the way a store does (scripts/fault_harness.py, tests/tracking/test_fault_harness.py).

A write is what changes a store: a POST, PATCH, DELETE or PUT to MLflow's REST API
(/api/2.0/mlflow/... and /api/2.0/mlflow-artifacts/..., artifact uploads included) that is
not a search. Reads (GETs, searches) are passed on and not counted, so "write k" is the
k-th change the store was asked for, from 1. Kinds of fault at write k:

- killed: the server is gone from write k on: every request, reads and /health included,
  has its connection closed unanswered, until `heal()` (the server is back).
- refused: write k is answered 400 with MLflow's error JSON, not passed on; the rest go through.
- lost_reply: write k reaches the store, but its answer is lost (the connection closed):
  the caller cannot tell it was taken; the rest go through.
- client_killed: write k reaches the store, and the process that asked for it (the process
  group `victim`) is killed outright (SIGKILL: no handler runs) before it hears the answer.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from service_procs import answers, free_port, spawn, stop_group, wait_until

KINDS = ("killed", "refused", "lost_reply", "client_killed")
WRITES = ("POST", "PATCH", "DELETE", "PUT")
HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}


class FaultProxy(ThreadingHTTPServer):
    """Forwards to `upstream` (host, port); `arm(kind, k)` sets the fault for the writes
    counted from now on, `heal()` forwards everything again. `writes` lists the
    (method, path) of each write seen since the last `arm`/`reset`."""

    daemon_threads = True

    def __init__(self, upstream: tuple[str, int]) -> None:
        super().__init__(("127.0.0.1", free_port()), _Handler)
        self.upstream = upstream
        self.lock = threading.Lock()
        self.kind: str | None = None
        self.k = 0
        self.writes: list[tuple[str, str]] = []
        self.faulted: list[tuple[str, str]] = []  # the writes the fault hit
        self.victim: int | None = None  # client_killed's process group
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def arm(self, kind: str | None, k: int = 0) -> None:
        if kind is not None and kind not in KINDS:
            raise ValueError(f"unknown fault kind {kind!r}: one of {', '.join(KINDS)}")
        with self.lock:
            self.kind, self.k, self.writes, self.faulted = kind, k, [], []

    def heal(self) -> None:
        with self.lock:
            self.kind = None

    def verdict(self, method: str, path: str) -> str:
        """What to do with a request: forward, drop (close unanswered), refuse,
        forward_drop (pass on, then lose the answer) or forward_kill (pass on, then kill
        the victim)."""
        with self.lock:
            write = method in WRITES and path.startswith("/api/2.0/mlflow") and not (
                path.split("?")[0].endswith("/search"))
            if write:
                self.writes.append((method, path.split("?")[0]))
            number = len(self.writes)
            if self.kind == "killed" and (number >= self.k or self.faulted):
                if write:
                    self.faulted.append(self.writes[-1])
                return "drop"
            if write and number == self.k and self.kind in ("refused", "lost_reply",
                                                            "client_killed"):
                self.faulted.append(self.writes[-1])
                return {"refused": "refuse", "lost_reply": "forward_drop"}.get(
                    self.kind, "forward_kill")
            return "forward"

    def close(self) -> None:
        self.shutdown()
        self.server_close()


class _Handler(BaseHTTPRequestHandler):
    server: FaultProxy
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet: the harness reports what matters
        pass

    def do_GET(self) -> None:
        self._handle()

    do_POST = do_PATCH = do_DELETE = do_PUT = do_HEAD = do_GET

    def _handle(self) -> None:
        body = self._body()
        verdict = self.server.verdict(self.command, self.path)
        if verdict == "drop":
            self.close_connection = True
            return
        if verdict == "refuse":
            self._answer(400, json.dumps({"error_code": "INVALID_PARAMETER_VALUE",
                                          "message": "refused by the fault proxy"}).encode(),
                         [("Content-Type", "application/json")])
            return
        status, headers, answer = self._forward(body)
        if verdict == "forward_kill" and self.server.victim is not None:
            os.killpg(self.server.victim, signal.SIGKILL)
        if verdict in ("forward_drop", "forward_kill"):
            self.close_connection = True
            return
        self._answer(status, answer, headers)

    def _body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                parts.append(self.rfile.read(size + 2)[:size])
                if size == 0:
                    return b"".join(parts)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _forward(self, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        connection = http.client.HTTPConnection(*self.server.upstream, timeout=120)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
            connection.request(self.command, self.path, body=body, headers=headers)
            response = connection.getresponse()
            answer = response.read()
            kept = [(k, v) for k, v in response.getheaders() if k.lower() not in HOP]
            return response.status, kept, answer
        finally:
            connection.close()

    def _answer(self, status: int, body: bytes, headers: list[tuple[str, str]]) -> None:
        self.send_response(status)
        for key, value in headers:
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


class MlflowServer:
    """`mlflow server` over SQLite with proxied artifacts in `folder`, on a free port kept
    across restarts (a server that comes back comes back at its address); `env` adds to
    its environment (the tests' stores that refuse a value too long, say)."""

    def __init__(self, folder: Path, env: dict[str, str] | None = None) -> None:
        self.folder = folder
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = env or {}
        self.process = None

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        log = self.folder / "server.log"
        env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
               "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               **self.env}
        self.process = spawn(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port",
             str(self.port), "--backend-store-uri", f"sqlite:///{self.folder / 'server.db'}",
             "--artifacts-destination", str(self.folder / "artifacts"), "--workers", "1"],
            log, env=env)
        wait_until(lambda: answers(f"{self.url}/health"), self.process, "mlflow server", log,
                   timeout=300)

    def stop(self) -> None:
        if self.process is not None:
            stop_group(self.process.pid)
            self.process = None
