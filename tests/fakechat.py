"""A scripted OpenAI-compatible chat-completions server for tests (127.0.0.1, no network).

A ThreadingHTTPServer in a thread, scripted with a queue of responses (status, body, delay,
headers) served one per request, in order; it records every request it receives.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from pydantic import JsonValue


@dataclass
class Scripted:
    status: int = 200
    body: bytes | JsonValue = None
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    def json(self) -> dict[str, JsonValue]:
        parsed = json.loads(self.body)
        assert isinstance(parsed, dict)
        return parsed


class FakeChatServer:
    """A scripted chat-completions endpoint; responses are served in order, one per request."""

    def __init__(self) -> None:
        self.script: deque[Scripted] = deque()
        self.received: list[Received] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.stopping = threading.Event()
        self.changed = threading.Condition()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                return None

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with server.changed:
                    server.received.append(
                        Received(self.path, dict(self.headers.items()), body, time.monotonic())
                    )
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                    reply = server.script.popleft() if server.script else None
                    server.changed.notify_all()
                try:
                    if reply is None:
                        reply = Scripted(418, b"no scripted response left")
                    if reply.delay:
                        server.stopping.wait(reply.delay)  # scripted slowness (ends at teardown)
                    data = (
                        reply.body
                        if isinstance(reply.body, bytes)
                        else json.dumps(reply.body).encode()
                    )
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    pass  # the client gave up (timed out) and closed the connection
                finally:
                    with server.changed:
                        server.in_flight -= 1
                        server.changed.notify_all()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1/"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    def push(self, *responses: Scripted) -> None:
        with self.changed:
            self.script.extend(responses)

    def wait_for_requests(self, n: int, timeout: float = 5.0) -> list[Received]:
        with self.changed:
            ok = self.changed.wait_for(lambda: len(self.received) >= n, timeout)
            assert ok, f"server saw {len(self.received)} requests, expected {n}"
            return list(self.received)

    def close(self) -> None:
        self.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


def completion(
    content: str | None = None, tool_calls: list[JsonValue] | None = None
) -> dict[str, JsonValue]:
    message: dict[str, JsonValue] = {"role": "assistant", "content": content}
    if tool_calls is not None:
        message["tool_calls"] = tool_calls
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
    }


def tool_call(name: str, arguments: str | None, call_id: str = "call_1") -> JsonValue:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
