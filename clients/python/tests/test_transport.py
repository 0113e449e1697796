"""The client's transport against a real HTTP/1.1 server on loopback that closes a kept-alive
connection the way nginx does on a reload: when the next request has arrived but before reading
it. No UMS here: what is tested is what the connection does."""

from __future__ import annotations

import socket
import struct
import threading

import httpx
import pytest

from ums_client import UMSClient
from ums_client.transport import ResendingTransport

OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


class ClosingServer(threading.Thread):
    """Serves each connection by `plan`: for each request on it, "answer" reads it and answers
    200 (keeping the connection), "close" waits until the request has arrived, then closes the
    connection without reading or answering it. `received` lists every request read, whole."""

    def __init__(self, plans: list[list[str]], unix_path: str | None = None) -> None:
        super().__init__(daemon=True)
        self.plans = plans
        self.received: list[bytes] = []
        if unix_path is None:
            self.listener = socket.create_server(("127.0.0.1", 0))
            self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        else:
            self.listener = socket.socket(socket.AF_UNIX)
            self.listener.bind(unix_path)
            self.listener.listen()
            self.url = "http://ums.test"

    def run(self) -> None:
        for plan in self.plans:
            connection, _ = self.listener.accept()
            with connection:
                for step in plan:
                    if step == "close":
                        connection.recv(1, socket.MSG_PEEK)  # it has arrived; leave it unread
                        connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                              struct.pack("ii", 1, 0))  # a reset, as nginx
                        break
                    self.received.append(read_request(connection))
                    connection.sendall(OK)
        self.listener.close()


def read_request(connection: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        data += connection.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    while len(body) < length:
        body += connection.recv(65536)
    return head + b"\r\n\r\n" + body


def serve(plans: list[list[str]], unix_path: str | None = None) -> ClosingServer:
    server = ClosingServer(plans, unix_path)
    server.start()
    return server


def test_a_request_met_by_a_kept_alive_connections_close_is_sent_again_on_a_new_one():
    server = serve([["answer", "close"], ["answer"]])
    transport = ResendingTransport()
    with httpx.Client(transport=transport, timeout=5) as http:
        assert http.post(server.url + "/first", json={"n": 1}).status_code == 200
        second = http.post(server.url + "/api/auth/refresh", json={"refresh_token": "t"})
    server.join(5)

    assert second.status_code == 200
    assert transport.resent == 1
    # The server read the resent request once, whole, on the second connection.
    assert [r.split(b" ")[1] for r in server.received] == [b"/first", b"/api/auth/refresh"]
    assert server.received[1].endswith(b'{"refresh_token":"t"}')


def test_a_new_connection_closed_without_an_answer_is_not_sent_again():
    server = serve([["close"], ["answer"]])
    transport = ResendingTransport()
    with (httpx.Client(transport=transport, timeout=5) as http,
          pytest.raises((httpx.RemoteProtocolError, httpx.ReadError))):
        http.post(server.url + "/api/auth/refresh", json={"refresh_token": "t"})

    assert transport.resent == 0
    assert server.received == []  # the second connection was never made
    server.listener.close()


def test_a_streamed_body_is_not_sent_again():
    server = serve([["answer", "close"], ["answer"]])
    transport = ResendingTransport()
    with httpx.Client(transport=transport, timeout=5) as http:
        http.get(server.url + "/first")
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            http.post(server.url + "/upload", content=iter([b"part one, ", b"part two"]))

    assert transport.resent == 0
    assert len(server.received) == 1
    server.listener.close()


def test_the_client_resends_through_a_reload_and_wraps_a_given_transport():
    server = serve([["answer", "close"], ["answer"]])
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        return httpx.Response(200, json={"status": "ok"})

    with UMSClient(server.url) as ums:
        ums.health()
        ums.health()  # met by the close, sent again
    server.join(5)
    assert [r.split(b" ")[1] for r in server.received] == [b"/health", b"/health"]

    mock = httpx.MockTransport(handler)
    with UMSClient("http://ums.test", transport=mock) as ums:
        ums.health()
        assert isinstance(ums._http._transport, ResendingTransport)
        assert ums._http._transport.inner is mock
    assert seen == ["/health"]


def test_a_new_unix_socket_connection_closed_without_an_answer_is_not_sent_again(tmp_path):
    path = str(tmp_path / "ums.sock")
    server = serve([["close"], ["answer"]], unix_path=path)
    transport = ResendingTransport(httpx.HTTPTransport(uds=path))
    with (httpx.Client(transport=transport, timeout=5) as http,
          pytest.raises((httpx.RemoteProtocolError, httpx.ReadError))):
        http.post(server.url + "/api/auth/refresh", json={"refresh_token": "t"})

    assert transport.resent == 0
    assert server.received == []
    server.listener.close()


def test_the_client_goes_through_the_proxy_the_environment_names(monkeypatch):
    for name in ("NO_PROXY", "no_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    proxy, direct = serve([["answer"]]), serve([["answer"]])
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    monkeypatch.setenv("http_proxy", proxy.url)
    with UMSClient("http://ums.test") as ums:
        ums.health()
    proxy.join(5)
    assert proxy.received[0].startswith(b"GET http://ums.test/health HTTP/1.1")

    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    with UMSClient(direct.url) as ums:
        ums.health()
    direct.join(5)
    assert direct.received[0].startswith(b"GET /health HTTP/1.1")
