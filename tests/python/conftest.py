"""Fixtures: a real `sluice serve` on a port the kernel gives it, started and stopped around
the tests.

The binary is $SLUICE_BIN, else the workspace's debug build (target/debug/sluice).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SLUICE_BIN = Path(os.environ.get("SLUICE_BIN", ROOT / "target" / "debug" / "sluice")).resolve()


def free_port() -> int:
    """A port that was free a moment ago, for redis-server, which cannot say which port it got
    (its `--port 0` turns TCP off); `sluice serve` binds port 0 and reads its port back."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Sluice:
    """One `sluice serve` process on port 0: it writes the address it bound to a ready file,
    which `wait_healthy` reads (so no port is picked beforehand and then found taken). Its
    output goes to a temporary file, shown on failure."""

    def __init__(self, args: list[str], env: dict[str, str]):
        self.port: int | None = None
        self.origin: str | None = None
        self._log = tempfile.TemporaryFile(mode="w+", encoding="utf-8", errors="replace")
        self._dir = tempfile.TemporaryDirectory(prefix="sluice-py-")
        self._ready_file = Path(self._dir.name) / "address"
        # Our environment without SLUICE_* (a developer's settings must not leak in), plus
        # the test's own variables. The working directory is empty: no stray sluice.toml.
        child_env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
        child_env.update(env)
        command = [str(SLUICE_BIN), "serve", "--listen", "127.0.0.1:0",
                   "--ready-file", str(self._ready_file), *args]
        self.process = subprocess.Popen(
            command,
            env=child_env,
            cwd=self._dir.name,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def log(self) -> str:
        self._log.seek(0)
        return self._log.read()[-64_000:]

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Waits for the ready file (the port), then for /healthz to answer 200."""
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"sluice serve exited early ({self.process.returncode}):\n{self.log()}")
            if self.origin is None and self._ready_file.is_file():
                address = self._ready_file.read_text().strip()
                self.port = int(address.rsplit(":", 1)[1])
                self.origin = f"http://{address}"
            if self.origin is not None:
                try:
                    with urllib.request.urlopen(f"{self.origin}/healthz", timeout=5) as res:
                        if res.status == 200:
                            return
                except (urllib.error.URLError, OSError):
                    pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"sluice serve ({self.origin or 'no address yet'}) never answered /healthz:\n{self.log()}")
            time.sleep(0.025)

    def get(self, path: str) -> str:
        with urllib.request.urlopen(f"{self.origin}{path}", timeout=10) as res:
            return res.read().decode()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        self._dir.cleanup()


def start(args: list[str], env: dict[str, str]) -> Sluice:
    """Starts a server and waits for /healthz."""
    if not SLUICE_BIN.is_file():
        raise FileNotFoundError(f"{SLUICE_BIN} is missing: build it with `cargo build -p sluice`")
    server = Sluice(args, env)
    try:
        server.wait_healthy()
    except BaseException:
        server.stop()
        raise
    return server


@pytest.fixture(scope="module")
def sluice_servers():
    """A factory: `sluice_servers(args, env)` starts a server, stopped after the module."""
    servers: list[Sluice] = []

    def factory(args: list[str] | None = None, env: dict[str, str] | None = None) -> Sluice:
        server = start(args or [], env or {})
        servers.append(server)
        return server

    yield factory
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def redis_url():
    """A real `redis-server` on a free port, in a temporary directory of its own, with every
    write persisted before it is answered (as the multi-node tests run it); stopped after the
    module."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is missing: scripts/setup.sh installs it")
    directory = tempfile.TemporaryDirectory(prefix="sluice-py-redis-")
    port = free_port()
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--appendonly", "yes",
         "--appendfsync", "always", "--save", "", "--dir", directory.name],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            assert process.poll() is None, f"redis-server exited ({process.returncode})"
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"redis-server never answered on port {port}"
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        directory.cleanup()


@pytest.fixture(scope="module")
def fast(sluice_servers):
    """A server whose scripted model answers `sdk_support.TEXT` as fast as it can."""
    from sdk_support import scripted

    return scripted(sluice_servers)


@pytest.fixture(scope="module")
def paced(sluice_servers):
    """The prompt echoed at 20 tokens a second: `words(n)` runs n/20 seconds."""
    from sdk_support import PACED, scripted

    return scripted(sluice_servers, env=PACED)
