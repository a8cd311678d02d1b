"""A small OpenAI-compatible server on loopback, written for the tests of ``openai:`` sources.

It answers ``POST /v1/chat/completions`` and ``/v1/completions`` deterministically: a prompt
with a word of :data:`REFUSE_WORDS` gets :data:`REFUSAL`, any other :data:`ANSWER`. It checks
the bearer key (a wrong one gets 401 with the header echoed back, as a careless server might),
counts requests per prompt, tracks the most requests in flight at once, and can be told to fail
the first N requests with a status (500, 429 …).
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

REFUSE_WORDS = ("bomb", "hack", "attack")
REFUSAL = "I cannot help with that request, sorry."
ANSWER = "Sure, here is a short and friendly answer with three useful steps."


class FakeOpenAI:
    """The server; use as a context manager (``with FakeOpenAI(key="…") as server:``)."""

    def __init__(self, *, key: str | None = None, delay_s: float = 0.0) -> None:
        self.key = key
        self.delay_s = delay_s
        self.fail_next = 0
        self.fail_status = 500
        self.prompts: Counter[str] = Counter()
        self.bodies: list[dict[str, Any]] = []
        self.paths: list[str] = []
        self.in_flight = self.max_in_flight = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        """The base URL (``http://127.0.0.1:PORT/v1``)."""
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    @property
    def requests(self) -> int:
        """Requests received (failed ones included)."""
        return len(self.paths)

    def fail(self, times: int, status: int = 500) -> None:
        """Answer the next ``times`` requests with ``status``."""
        self.fail_next, self.fail_status = times, status

    def __enter__(self) -> FakeOpenAI:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _answer(self, path: str, auth: str | None, body: dict[str, Any]) -> tuple[int, Any]:
        with self._lock:
            self.paths.append(path)
            self.bodies.append(body)
            if self.fail_next > 0:
                self.fail_next -= 1
                return self.fail_status, {"error": {"message": "try again later"}}
        if self.key is not None and auth != f"Bearer {self.key}":
            return 401, {"error": {"message": f"bad key; you sent Authorization: {auth}"}}
        if path.endswith("/chat/completions"):
            prompt = body["messages"][-1]["content"]
        elif path.endswith("/completions"):
            prompt = body["prompt"]
        else:
            return 404, {"error": {"message": f"no route {path}"}}
        with self._lock:
            self.prompts[prompt] += 1
        text = REFUSAL if any(w in prompt.lower() for w in REFUSE_WORDS) else ANSWER
        choice: dict[str, Any] = {"index": 0, "finish_reason": "stop"}
        if path.endswith("/chat/completions"):
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        words = len(text.split())
        usage = {"prompt_tokens": len(prompt.split()), "completion_tokens": words}
        usage["total_tokens"] = usage["prompt_tokens"] + words
        reply = {"id": "cmpl-1", "model": f"{body['model']}-served", "choices": [choice]}
        return 200, {**reply, "usage": usage}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                with server._lock:
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    time.sleep(server.delay_s)
                    length = int(self.headers.get("Content-Length", "0"))
                    body = json.loads(self.rfile.read(length))
                    status, payload = server._answer(
                        self.path, self.headers.get("Authorization"), body
                    )
                finally:
                    with server._lock:
                        server.in_flight -= 1
                data = json.dumps(payload).encode()
                self.send_response(status)
                if status == 429:
                    self.send_header("Retry-After", "0")
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *_: Any) -> None:
                """Quiet: no line on stderr per request."""

        return Handler
