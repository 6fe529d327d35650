"""A scripted OpenAI-compatible server on 127.0.0.1 so API-model tests go through real HTTP.

Only ``POST /v1/chat/completions``. Replies come from ``responder(request_body) -> text``; the first
requests can be scripted to fail (``failures=[429, 500]``), with a ``retry-after-ms`` header so
the openai client's backoff waits milliseconds, not seconds. Every request is recorded.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

Responder = Callable[[dict[str, Any]], str]


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


class OpenAIStub:
    """Context manager; ``base_url`` is what to give the client (``http://127.0.0.1:PORT/v1``)."""

    def __init__(
        self,
        responder: Responder,
        failures: list[int] | None = None,
        reported_model: str | None = None,
        api_key: str | None = None,
        retry_after_ms: int = 1,
    ) -> None:
        self.responder = responder
        self.failures = list(failures or [])
        self.reported_model = reported_model  # model name in replies (default: the requested one)
        self.api_key = api_key  # when set, other keys get 401
        self.retry_after_ms = retry_after_ms
        self.requests: list[Recorded] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.02,), daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> OpenAIStub:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def _reply(self, path: str, headers: dict[str, str], body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        with self._lock:
            self.requests.append(Recorded(path, headers, body))
            failure = self.failures.pop(0) if self.failures else None
        if path != "/v1/chat/completions":
            return 404, _error(f"no route {path}", "invalid_request_error")
        if self.api_key is not None and headers.get("authorization") != f"Bearer {self.api_key}":
            return 401, _error("Incorrect API key provided", "invalid_request_error", "invalid_api_key")
        if failure is not None:
            return failure, _error(f"scripted failure {failure}", "server_error" if failure >= 500 else "rate_limit_error")
        text = self.responder(body)
        prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []))
        completion_tokens = len(text.split())
        return 200, {
            "id": f"chatcmpl-{len(self.requests)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.reported_model or body.get("model", ""),
            "system_fingerprint": "fp_stub",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop", "logprobs": None}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                raw = self.rfile.read(int(self.headers.get("content-length") or 0))
                try:
                    body = json.loads(raw or b"{}")
                except ValueError:
                    body = {"_unparsed": raw.decode("utf-8", "replace")}
                status, payload = stub._reply(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                if status == 429 or status >= 500:
                    self.send_header("retry-after-ms", str(stub.retry_after_ms))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

        return Handler


def _error(message: str, kind: str, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}
