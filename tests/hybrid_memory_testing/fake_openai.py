"""A local HTTP server speaking the chat-completions and embeddings protocols, for the real `openai` client.

It records every request and can fail on purpose (HTTP errors, slow answers), or refuse parameters the way a
reasoning model (o-series, gpt-5) or a classic one does, with OpenAI's 400 error bodies.
"""

from __future__ import annotations

import base64
import json
import struct
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# What each kind of model refuses: a reasoning model `max_tokens` and any temperature but 1, a classic model (or
# an older compatible server) `max_completion_tokens`.
REASONING = frozenset({"max_tokens", "temperature"})
CLASSIC = frozenset({"max_completion_tokens"})


def refusal(body: dict[str, Any], refuse: frozenset[str]) -> dict[str, Any] | None:
    """OpenAI's 400 body for the first refused parameter the request carries, or None."""
    if "max_tokens" in body and "max_tokens" in refuse:
        return {"message": "Unsupported parameter: 'max_tokens' is not supported with this model. Use "
                           "'max_completion_tokens' instead.",
                "type": "invalid_request_error", "param": "max_tokens", "code": "unsupported_parameter"}
    if body.get("temperature", 1) != 1 and "temperature" in refuse:
        return {"message": f"Unsupported value: 'temperature' does not support {body['temperature']} with this "
                           "model. Only the default (1) value is supported.",
                "type": "invalid_request_error", "param": "temperature", "code": "unsupported_value"}
    if "max_completion_tokens" in body and "max_completion_tokens" in refuse:
        # What servers that predate the parameter answer: no `param`, the name only in the text.
        return {"message": "Unrecognized request argument supplied: max_completion_tokens",
                "type": "invalid_request_error", "param": None, "code": None}
    return None


def bag_of_words(text: str, dims: int = 64) -> list[float]:
    """A deterministic embedding: each word (lower-cased, letters only) counted in one of `dims` buckets."""
    v = [0.0] * dims
    for word in "".join(c if c.isalpha() else " " for c in text.lower()).split():
        v[zlib.crc32(word.encode()) % dims] += 1.0
    return v


def embeddings_reply(body: dict[str, Any]) -> dict[str, Any]:
    texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
    data = []
    for i, text in enumerate(texts):
        vector = bag_of_words(text)
        if body.get("encoding_format") == "base64":  # what the openai client asks for by default
            encoded: Any = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        else:
            encoded = vector
        data.append({"object": "embedding", "index": i, "embedding": encoded})
    tokens = sum(len(t) // 4 for t in texts)
    return {"object": "list", "data": data, "model": body["model"],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


class FakeOpenAI:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []  # the requests answered with a completion
        self.received: list[dict[str, Any]] = []  # every request, refused ones included
        self.refuse: frozenset[str] = frozenset()  # parameters answered with a 400 (REASONING, CLASSIC or both)
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
                    fake.received.append(body)
                    refused = refusal(body, fake.refuse)
                    failure = None if refused else (fake.failures.pop(0) if fake.failures else None)
                    if refused is None and (failure is None or isinstance(failure, float)):
                        fake.requests.append(body)
                        n = len(fake.requests)
                if refused is not None:
                    self._send(400, {"error": refused})
                    return
                if isinstance(failure, int):
                    self._send(failure, {"error": {"message": "injected failure", "type": "server_error"}})
                    return
                if isinstance(failure, float):
                    time.sleep(failure)
                if self.path.endswith("/embeddings"):
                    self._send(200, embeddings_reply(body))
                    return
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
