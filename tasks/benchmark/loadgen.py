"""A lean HTTP/1.1 load generator: keep-alive sockets, requests prepared in advance.

A general-purpose client (httpx, requests) spends more Python per request than a sub-millisecond
server does, which would hide it. This one sends prepared bytes and reads the answer by its
Content-Length, so what it measures is the server plus loopback. The same client drives any
server (the gateway, `mlflow models serve`), so their figures compare.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import numpy as np


@dataclass(frozen=True)
class Run:
    latencies_s: np.ndarray  # one per request, in send order per connection
    wall_s: float
    concurrency: int

    @property
    def throughput(self) -> float:
        return len(self.latencies_s) / self.wall_s

    def summary(self) -> dict[str, float]:
        ms = self.latencies_s * 1000
        p50, p95, p99 = np.percentile(ms, [50, 95, 99])
        return {
            "p50_ms": float(p50),
            "p95_ms": float(p95),
            "p99_ms": float(p99),
            "max_ms": float(ms.max()),
            "mean_ms": float(ms.mean()),
            "throughput_rps": self.throughput,
            "requests": float(len(ms)),
        }


def request_bytes(url: str, path: str, body: bytes, content_type: str = "application/json",
                  headers: dict[str, str] | None = None) -> bytes:  # fmt: skip
    host = urlsplit(url).netloc
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}", f"Content-Type: {content_type}", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class Connection:
    """One keep-alive connection; `send` returns (status, body)."""

    def __init__(self, url: str):
        parts = urlsplit(url)
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""

    def send(self, request: bytes) -> tuple[int, bytes]:
        self.sock.sendall(request)
        while b"\r\n\r\n" not in self.buffer:
            self._read()
        head, _, rest = self.buffer.partition(b"\r\n\r\n")
        status = int(head[9:12])
        length = None
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if length is None:
            raise RuntimeError(f"response without Content-Length: {head[:200]!r}")
        while len(rest) < length:
            self.buffer = rest
            self._read()
            rest = self.buffer
        self.buffer = rest[length:]
        return status, rest[:length]

    def _read(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        self.buffer += chunk

    def close(self) -> None:
        self.sock.close()


def drive(url: str, requests: Sequence[bytes], total: int, concurrency: int = 1, warmup: int = 50) -> Run:
    """Send `total` requests (cycling through `requests`) over `concurrency` connections.

    Each connection sends its next request as soon as the previous answer is read (closed
    loop). Any status other than 200 aborts the run: figures of failed requests mean nothing.
    """
    connections = [Connection(url) for _ in range(concurrency)]
    try:
        for i in range(warmup):
            _checked(connections[i % concurrency].send(requests[i % len(requests)]))
        per_connection = [total // concurrency + (1 if i < total % concurrency else 0) for i in range(concurrency)]
        results: list[list[float]] = [[] for _ in range(concurrency)]
        errors: list[BaseException] = []
        start_gate = threading.Barrier(concurrency + 1)

        def worker(index: int) -> None:
            conn, out = connections[index], results[index]
            start_gate.wait()
            try:
                for j in range(per_connection[index]):
                    request = requests[(index + j * concurrency) % len(requests)]
                    began = time.perf_counter()
                    status = conn.send(request)
                    out.append(time.perf_counter() - began)
                    _checked(status)
            except BaseException as exc:  # reported after the run
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
        for thread in threads:
            thread.start()
        start_gate.wait()
        began = time.perf_counter()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - began
        if errors:
            raise errors[0]
        return Run(np.array([x for out in results for x in out]), wall, concurrency)
    finally:
        for conn in connections:
            conn.close()


def _checked(answer: tuple[int, bytes]) -> None:
    status, body = answer
    if status != 200:
        raise RuntimeError(f"HTTP {status}: {body[:300].decode(errors='replace')}")
