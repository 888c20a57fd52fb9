"""Start and stop a private Azurite for tests: free ports, own --location, stopped by PID."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
AZURITE_BIN = ROOT / "node_modules" / ".bin" / "azurite"
ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float = 30.0) -> None:
    """Block until something accepts on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            sock.settimeout(0.2)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on port {port} after {timeout}s")


@dataclass
class Azurite:
    """One Azurite process (blob, queue, table) with its data in ``location``."""

    location: Path
    blob_port: int = field(default_factory=free_port)
    queue_port: int = field(default_factory=free_port)
    table_port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    @property
    def connection_string(self) -> str:
        """A connection string for all three services of this instance."""
        host = "http://127.0.0.1"
        return (f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
                f"BlobEndpoint={host}:{self.blob_port}/{ACCOUNT};"
                f"QueueEndpoint={host}:{self.queue_port}/{ACCOUNT};"
                f"TableEndpoint={host}:{self.table_port}/{ACCOUNT};")

    def start(self) -> "Azurite":
        """Start (or restart, same location and ports) and wait until all three ports accept."""
        if not AZURITE_BIN.exists():
            raise RuntimeError(f"{AZURITE_BIN} is missing: run `npm install` (./dev.sh does)")
        self.location.mkdir(parents=True, exist_ok=True)
        log = open(self.location / "azurite.log", "ab")
        self.process = subprocess.Popen(
            [str(AZURITE_BIN), "--silent", "--skipApiVersionCheck", "--disableTelemetry",
             "--location", str(self.location),
             "--blobHost", "127.0.0.1", "--blobPort", str(self.blob_port),
             "--queueHost", "127.0.0.1", "--queuePort", str(self.queue_port),
             "--tableHost", "127.0.0.1", "--tablePort", str(self.table_port)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        for port in (self.blob_port, self.queue_port, self.table_port):
            wait_for_port(port)
        return self

    def stop(self) -> None:
        """Stop the process group by PID; SIGKILL if it does not exit in 5 s."""
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=5)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=5)
