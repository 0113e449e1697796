"""The HTTP transport of the client: a request caught by a keep-alive connection's close is sent
again on a new connection.

A server (or the nginx in front of UMS) may close a kept-alive connection at any moment it holds
no request: its idle timeout, a graceful restart, an ``nginx -s reload`` during a rolling
restart of UMS. A request written just as that happens meets a closed connection and gets no
answer at all, though the server never read it. Browsers resend such a request, whatever its
method, when the connection had already carried a response and nothing of the new response
came back (Chromium's ``ShouldResendRequest``); this transport does the same, so a portal's
request is not failed by its proxy's reload.

What it cannot tell apart: a server that read the request and then died without answering. A
resent request then arrives twice. For UMS that fails safe: a refresh token arriving a second
time counts as reuse and ends the session, and a second registration is refused as taken.
"""

from __future__ import annotations

from typing import Any

import httpx

#: A request caught by closes on several pooled connections in a row is sent this many times
#: at most; each close takes its connection out of the pool, so a later try opens a new one.
MAX_SENDS = 4


class ResendingTransport(httpx.BaseTransport):
    """Wraps a transport (``httpx.HTTPTransport`` by default) and resends a request once more
    each time a reused connection closes before any of its response arrived.

    ``resent`` counts the requests sent again, for a caller that wants to see it happen.
    """

    def __init__(self, inner: httpx.BaseTransport | None = None) -> None:
        self.inner = inner if inner is not None else httpx.HTTPTransport()
        self.resent = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        for _ in range(MAX_SENDS - 1):
            attempt = _Attempt(request.extensions.get("trace"))
            request.extensions = {**request.extensions, "trace": attempt.trace}
            try:
                return self.inner.handle_request(request)
            except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError):
                if not (attempt.closed_before_answering() and _replayable(request)):
                    raise
                self.resent += 1
            finally:
                request.extensions = attempt.restore(request.extensions)
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


class _Attempt:
    """What httpcore's trace says of one send: whether it used a pooled connection and whether
    the response's head arrived."""

    def __init__(self, outer_trace: Any) -> None:
        self.outer_trace = outer_trace
        self.events: set[str] = set()

    def trace(self, name: str, info: dict[str, Any]) -> None:
        self.events.add(name)
        if self.outer_trace is not None:
            self.outer_trace(name, info)

    def closed_before_answering(self) -> bool:
        sent_on_reused_connection = (
            "http11.send_request_headers.started" in self.events
            and "connection.connect_tcp.started" not in self.events
        )
        return sent_on_reused_connection and (
            "http11.receive_response_headers.complete" not in self.events
        )

    def restore(self, extensions: dict[str, Any]) -> dict[str, Any]:
        restored = {k: v for k, v in extensions.items() if k != "trace"}
        if self.outer_trace is not None:
            restored["trace"] = self.outer_trace
        return restored


def _replayable(request: httpx.Request) -> bool:
    """A body given whole (bytes, JSON, a form) can be sent again; a streamed one cannot."""
    return isinstance(request.stream, httpx.ByteStream)
