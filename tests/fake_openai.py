"""A local HTTP server speaking the chat-completions protocol, for the real `openai` client to call.

It records every request and can fail on purpose (HTTP errors, slow answers).
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class FakeOpenAI:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.failures: list[int | float] = []  # next answers: an HTTP status, or a delay in seconds (float)
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def start(self) -> FakeOpenAI:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def user_prompts(self) -> list[str]:
        with self.lock:
            return [r["messages"][-1]["content"] for r in self.requests]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with fake.lock:
                    failure = fake.failures.pop(0) if fake.failures else None
                    if failure is None or isinstance(failure, float):
                        fake.requests.append(body)
                        n = len(fake.requests)
                if isinstance(failure, int):
                    self._send(failure, {"error": {"message": "injected failure", "type": "server_error"}})
                    return
                if isinstance(failure, float):
                    time.sleep(failure)
                prompt = body["messages"][-1]["content"]
                lines = prompt.split("Next messages:\n", 1)[1].split("\n\nUpdated summary:")[0].splitlines()
                text = f"summary #{n}: {len(lines)} messages, last was <{lines[-1]}>"
                self._send(200, {
                    "id": f"chatcmpl-{n}", "object": "chat.completion", "created": int(time.time()),
                    "model": body["model"],
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": text}}],
                    "usage": {"prompt_tokens": len(prompt) // 4, "completion_tokens": len(text) // 4,
                              "total_tokens": (len(prompt) + len(text)) // 4},
                })

            def _send(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)

        return Handler
