"""A server subprocess on a free loopback port, shared by the HTTP tests, the browser tests and the serving
benchmark (``wait_healthy``)."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import httpx

STARTUP_SECONDS = 60
LOG_TAIL = 5000  # characters of the server log an error shows


def free_port() -> int:
    """A port that was free on the loopback interface a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(
    url: str, process: subprocess.Popen, log: Path, seconds: float = STARTUP_SECONDS, interval: float = 0.1
) -> None:
    """Poll ``url``/healthz until it answers 200, failing fast (with the log's tail) if the server exits and after
    ``seconds`` at the most; the one poller of the tests and the serving benchmark."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{log.read_text()[-LOG_TAIL:]}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(interval)
    raise RuntimeError(f"server not ready after {seconds:g} s:\n{log.read_text()[-LOG_TAIL:]}")


class ServerProcess:
    """``command_for(port)`` run as a subprocess with its output in ``log``; ``wait_ready`` polls /healthz."""

    def __init__(self, command_for: Callable[[int], list[str]], log: Path, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self._log_file = open(log, "wb")  # noqa: SIM115 - closed in close()
        self.process = subprocess.Popen(
            command_for(self.port), env=env, stdout=self._log_file, stderr=subprocess.STDOUT
        )

    def wait_ready(self) -> None:
        """Poll /healthz (bounded in time) until the server answers."""
        wait_healthy(self.url, self.process, self.log)

    def close(self) -> None:
        """Stop the server (terminate, then kill if it lingers)."""
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        self._log_file.close()
