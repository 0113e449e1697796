"""The HTTP transport of the client: a request caught by a keep-alive connection's close is sent
again on a new connection.

A server (or the nginx in front of UMS) may close a kept-alive connection at any moment it holds
no request: its idle timeout, a graceful restart, an ``nginx -s reload`` during a rolling
restart of UMS. A request written just as that happens meets a closed connection and gets no
answer at all, though the server never read it. Browsers resend such a request, whatever its
method, when the connection had already carried a response and no new response came back
(Chromium's ``ShouldResendRequest``); this transport does the same, so a portal's request is
not failed by its proxy's reload. (HTTP/1.1 only: the client does not speak HTTP/2.)

What it cannot tell apart: a server that read the request and then died before its answer's
head was complete. A resent request then arrives twice. For UMS that fails safe: a refresh
token arriving a second time counts as reuse and ends the session, and a second registration
is refused as taken.
"""

from __future__ import annotations

import threading
import urllib.parse
import urllib.request
from typing import Any

import httpx

#: A request caught by closes on several pooled connections in a row is sent this many times
#: at most; each close takes its connection out of the pool, so a later try opens a new one.
MAX_SENDS = 4

#: httpcore's trace events that open a connection (TCP, possibly through a proxy, or a Unix
#: socket); a send without one went out on a pooled connection.
_CONNECTING = (".connect_tcp.started", ".connect_unix_socket.started")


class ResendingTransport(httpx.BaseTransport):
    """Wraps a transport (``httpx.HTTPTransport`` by default) and resends a request once more
    each time a reused connection closes before the head of its response arrived.

    ``resent`` counts the requests sent again, for a caller that wants to see it happen.
    """

    def __init__(self, inner: httpx.BaseTransport | None = None) -> None:
        self.inner = inner if inner is not None else httpx.HTTPTransport()
        self.resent = 0
        self._count_lock = threading.Lock()

    @classmethod
    def around(cls, transport: httpx.BaseTransport | None, url: str) -> ResendingTransport:
        """``transport`` wrapped (unless it resends already); without one, httpx's own, through
        the proxy the environment names for ``url``, as httpx would have chosen it."""
        if isinstance(transport, ResendingTransport):
            return transport
        return cls(transport if transport is not None else _environment_transport(url))

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        for _ in range(MAX_SENDS - 1):
            attempt = _Attempt(request.extensions.get("trace"))
            request.extensions = {**request.extensions, "trace": attempt.trace}
            try:
                return self.inner.handle_request(request)
            except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError):
                if not (attempt.closed_before_answering() and _replayable(request)):
                    raise
                with self._count_lock:
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
        connected = any(name.endswith(_CONNECTING) for name in self.events)
        sent = "http11.send_request_headers.started" in self.events
        answered = "http11.receive_response_headers.complete" in self.events
        return sent and not connected and not answered

    def restore(self, extensions: dict[str, Any]) -> dict[str, Any]:
        restored = {k: v for k, v in extensions.items() if k != "trace"}
        if self.outer_trace is not None:
            restored["trace"] = self.outer_trace
        return restored


def _replayable(request: httpx.Request) -> bool:
    """A body given whole (bytes, JSON, a form) can be sent again; a streamed one cannot."""
    return isinstance(request.stream, httpx.ByteStream)


def _environment_transport(url: str) -> httpx.HTTPTransport:
    """httpx reads ``HTTP(S)_PROXY``, ``ALL_PROXY`` and ``NO_PROXY`` only for a client given no
    transport; the client always gives one, so it reads them itself, for its one server."""
    parts = urllib.parse.urlsplit(url)
    proxies = urllib.request.getproxies_environment()
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    if proxy and not urllib.request.proxy_bypass_environment(parts.hostname or "", proxies):
        return httpx.HTTPTransport(proxy=proxy)
    return httpx.HTTPTransport()
