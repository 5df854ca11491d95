"""A small blocking client for the API socket, used by the CLI and tests."""
from __future__ import annotations

import itertools
import socket
from collections.abc import Iterator
from typing import Any

from .errors import DaemonUnreachable
from .protocol import jsonl

__all__ = ["ApiClient"]

# replies can be large (a full `list`), so the client accepts long lines
CLIENT_MAX_LINE = 512 * 1024 * 1024


class ApiClient:
    """Connects to `path`, or uses `sock` (already connected) when given."""

    def __init__(self, path: str = "", timeout: float | None = 10.0,
                 sock: socket.socket | None = None):
        self.path = path
        if sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            try:
                sock.connect(path)
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                sock.close()
                raise DaemonUnreachable(f"no nhrpbridge daemon on {path}: {exc.strerror}") from None
        else:
            sock.settimeout(timeout)
        self.sock = sock
        self.decoder = jsonl.Decoder(max_line=CLIENT_MAX_LINE)
        self._ids = itertools.count(1)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def send(self, msg: dict[str, Any]) -> None:
        self.sock.sendall(jsonl.encode(msg))

    def messages(self) -> Iterator[dict[str, Any]]:
        """Every message the daemon sends, until it closes."""
        while True:
            msg = self.decoder.next_message()
            if msg is not None:
                yield msg
                continue
            data = self.sock.recv(1 << 20)
            if not data:
                return
            self.decoder.feed(data)

    def request(self, op: str, **args: Any) -> dict[str, Any]:
        """Send one request and return its reply (pushed events before it are skipped)."""
        req_id = next(self._ids)
        self.send({"op": op, "id": req_id, **args})
        for msg in self.messages():
            if msg.get("id") == req_id:
                return msg
        raise ConnectionError("daemon closed the connection before replying")
