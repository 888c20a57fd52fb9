"""Run local_host.py as a real process (like one Functions instance), stopped by PID."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from azurite_proc import free_port, wait_for_port

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class HostProcess:
    """One local host serving function_app on its own port, logging to ``log_path``."""

    env: dict[str, str]
    log_path: Path
    functions: list[str] | None = None
    timers: bool = False
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """Base URL of the HTTP routes."""
        return f"http://127.0.0.1:{self.port}/api"

    def start(self) -> "HostProcess":
        """Start and wait until HTTP answers."""
        cmd = [sys.executable, str(ROOT / "local_host.py"), "--port", str(self.port),
               "--log-file", str(self.log_path), "--settings", "/nonexistent"]
        if not self.timers:
            cmd.append("--no-timers")
        if self.functions:
            cmd += ["--functions", ",".join(self.functions)]
        env = {**os.environ, **self.env, "PYTHONUNBUFFERED": "1"}
        with open(self.log_path.with_suffix(".out"), "ab") as out:
            self.process = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        try:
            wait_for_port(self.port, timeout=90)  # a loaded 2-core machine can take a while to import
        except TimeoutError:
            self.stop()
            out = self.log_path.with_suffix(".out").read_text()[-3000:]
            raise RuntimeError(f"local host did not start: {out}") from None
        return self

    def kill(self) -> None:
        """SIGKILL: the process dies between any two lines."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 15 s."""
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    def events(self) -> list[dict]:
        """The engine's structured log events written by this host so far."""
        found = []
        path = self.log_path if self.log_path.exists() else self.log_path.with_suffix(".out")
        if path.exists():
            for line in path.read_text(errors="replace").splitlines():
                start = line.find('{"event":')
                if start >= 0:
                    try:
                        found.append(json.loads(line[start:]))
                    except json.JSONDecodeError:
                        pass
        return found
