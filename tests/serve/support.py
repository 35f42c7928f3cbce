"""``fitchat serve`` as a subprocess on a free 127.0.0.1 port, and a raw SSE reader for what clients hide."""

from __future__ import annotations

import http.client
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from tests.processes import restore_ctrl_c

READY = re.compile(r"serving (\S+) on (http://\S+/v1)")


class ServeProcess:
    """``python -m fitchat serve MODEL --port 0 ...``, started and waited for until it prints its ready line."""

    def __init__(self, model: Path, home: Path, *args: str, env: dict[str, str] | None = None,
                 timeout: float = 120.0) -> None:
        environ = dict(os.environ)
        for var, sub in (("XDG_DATA_HOME", "data"), ("XDG_CACHE_HOME", "cache"), ("XDG_CONFIG_HOME", "config")):
            (home / sub).mkdir(parents=True, exist_ok=True)
            environ[var] = str(home / sub)
        environ.pop("FITCHAT_API_KEY", None)
        environ.update(env or {})
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fitchat", "serve", str(model), "--port", "0", "--threads", "1", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environ, preexec_fn=restore_ctrl_c,
        )
        self.stderr: list[str] = []
        threading.Thread(target=self._drain_stderr, daemon=True).start()
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [lines.put(line) for line in self.proc.stdout or ()], daemon=True).start()
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                self.kill()
                raise RuntimeError(f"fitchat serve did not get ready: {''.join(self.stderr)[-2000:]}") from None
            match = READY.search(line)
            if match:
                self.model_id, self.url = match.group(1), match.group(2)
                break
        self.host, self.port = "127.0.0.1", int(self.url.rsplit(":", 1)[1].split("/")[0])

    def _drain_stderr(self) -> None:
        for line in self.proc.stderr or ():
            self.stderr.append(line)

    def interrupt(self, timeout: float) -> int:
        """ctrl+c; the exit status (raises if it takes longer than ``timeout``)."""
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def request(self, method: str, path: str, body: bytes | dict[str, Any] | None = None,
                headers: dict[str, str] | None = None, timeout: float = 60) -> tuple[int, dict[str, Any]]:
        """One request; (status, JSON body)."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            data = json.dumps(body).encode() if isinstance(body, dict) else body
            conn.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
            resp = conn.getresponse()
            return resp.status, json.loads(resp.read() or b"null")
        finally:
            conn.close()

    def sse(self, path: str, body: dict[str, Any], timeout: float = 120) -> tuple[list[dict[str, Any]], bool]:
        """A streamed request read raw: (chunks, whether ``data: [DONE]`` ended it)."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            conn.request("POST", path, body=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            assert resp.status == 200, resp.read()
            chunks: list[dict[str, Any]] = []
            for raw in resp:
                line = raw.decode().strip()
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    return chunks, True
                chunks.append(json.loads(line[6:]))
            return chunks, False
        finally:
            conn.close()
