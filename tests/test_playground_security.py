"""The playground as a local server that any web page can reach: each defence driven over loopback
against the real server (cross-site writes, DNS rebinding, the token, slow and numerous clients).
The same attacks from a real Chromium page on another origin are in test_playground_browser.py."""

import http.client
import json
import socket
import time

import pytest

from playground import config as configuration
from playground import security
from playground.server import MAX_CONNECTIONS, Handler, Server

SMALL = configuration.Config(dataset="moons", layers=("relu",), width=4, resolution=32, steps_per_update=5)
EVIL = "http://evil.example"


@pytest.fixture
def server():
    server = Server(0, SMALL)
    server.start()
    yield server
    server.stop()


def _send(server, method, path, body=None, headers=None):
    """(status, headers, body) of one request with exactly `headers` (no token unless given)."""
    connection = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response, response.read()
    finally:
        connection.close()


def _state(server):
    with server.session.lock:
        return server.session.run.config, server.session.running


@pytest.mark.parametrize("headers, body, message", [
    # the curl: a cross-origin text/plain POST (a "simple" request: no preflight)
    ({"Origin": EVIL, "Content-Type": "text/plain"}, b'{"learning_rate": 1}', "origin 'http://evil.example'"),
    ({"Origin": EVIL, "Content-Type": "application/x-www-form-urlencoded"}, b"learning_rate=1", "origin"),
    ({"Origin": "null", "Content-Type": "text/plain"}, b'{"learning_rate": 1}', "origin 'null'"),
    ({"Content-Type": "application/json"}, b'{"learning_rate": 1}', "X-Playground-Token header"),
    ({"Content-Type": "text/plain", "TOKEN": ""}, b'{"learning_rate": 1}', "Content-Type: application/json"),
    ({"Content-Type": "application/json", "Origin": EVIL, "TOKEN": ""}, b'{"learning_rate": 1}', "origin"),
    ({"Content-Type": "application/json", "Cookie": "COOKIE"}, b'{"learning_rate": 1}', "X-Playground-Token"),
    ({"Content-Type": "application/json", security.TOKEN_HEADER: "guess"}, b'{"learning_rate": 1}', "Token header"),
])
@pytest.mark.parametrize("path", ["/api/config", "/api/control", "/api/upload"])
def test_cross_site_writes_are_refused_and_change_nothing(server, path, headers, body, message):
    port = server.server_address[1]
    headers = dict(headers)
    if "TOKEN" in headers:
        del headers["TOKEN"]
        headers[security.TOKEN_HEADER] = server.token
    if headers.get("Cookie") == "COOKIE":  # a cookie rides on requests other local pages make: not enough
        headers["Cookie"] = f"{security.cookie_name(port)}={server.token}"
    before = _state(server)
    status, _, data = _send(server, "POST", path, body, headers)
    assert status == 403 and message in json.loads(data)["error"]
    assert _state(server) == before


def test_the_pages_own_write_is_accepted(server):
    port = server.server_address[1]
    for origin in (None, f"http://127.0.0.1:{port}", f"http://localhost:{port}"):
        headers = {"Content-Type": "application/json; charset=utf-8", security.TOKEN_HEADER: server.token}
        if origin:
            headers["Origin"] = origin
        status, _, data = _send(server, "POST", "/api/control", b'{"action": "pause"}', headers)
        assert status == 200, data


@pytest.mark.parametrize("path", ["/", "/api/data", "/api/regions", "/api/export/model", "/api/frame", "/app.js"])
def test_dns_rebinding_gets_nothing(server, path):
    port = server.server_address[1]
    for host in (f"attacker.example:{port}", "attacker.example", f"127.0.0.1.evil.example:{port}",
                 f"127.0.0.1:{port + 1}", f"localhost:{port}.evil"):
        status, _, data = _send(server, "GET", path + f"?token={server.token}",
                                headers={"Host": host, security.TOKEN_HEADER: server.token})
        assert status == 403 and "is not this server" in json.loads(data)["error"]
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", f"LOCALHOST:{port}"):
        status, _, _ = _send(server, "GET", path + f"?token={server.token}", headers={"Host": host})
        assert status == 200


def test_reads_need_the_token(server):
    port = server.server_address[1]
    assert _send(server, "GET", "/api/data")[0] == 403
    assert _send(server, "GET", "/api/data", headers={security.TOKEN_HEADER: "x" * 43})[0] == 403
    assert _send(server, "GET", "/api/data?token=wrong")[0] == 403
    status, _, data = _send(server, "GET", "/api/data", headers={"Cookie": f"other=1; {security.cookie_name(port)}=bad"})
    assert status == 403 and "?token=" in json.loads(data)["error"]
    for headers, path in (({security.TOKEN_HEADER: server.token}, "/api/data"),
                          ({"Cookie": f"{security.cookie_name(port)}={server.token}"}, "/api/data"),
                          ({}, f"/api/data?token={server.token}")):
        status, _, data = _send(server, "GET", path, headers=headers)
        assert status == 200 and "x_train" in json.loads(data)
    # a cookie of another port's playground is not this one's
    status, _, _ = _send(server, "GET", "/api/data", headers={"Cookie": f"{security.cookie_name(port + 1)}={server.token}"})
    assert status == 403


def test_the_page_gets_its_token_by_the_printed_address_then_by_cookie(server):
    port = server.server_address[1]
    status, response, body = _send(server, "GET", f"/?token={server.token}")
    assert status == 200 and f'<meta name="playground-token" content="{server.token}">'.encode() in body
    cookie = response.getheader("Set-Cookie")
    assert cookie.startswith(f"{security.cookie_name(port)}={server.token};")
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert response.getheader("X-Frame-Options") == "DENY"
    status, _, body = _send(server, "GET", "/")
    assert status == 403 and server.token.encode() not in body and b"?token=" in body
    status, response, body = _send(server, "GET", "/?layers=relu", headers={"Cookie": cookie.split(";")[0]})
    assert status == 200 and server.token.encode() in body and response.getheader("Set-Cookie") is None
    assert server.url == f"http://127.0.0.1:{port}/?token={server.token}"


def test_every_server_draws_its_own_token():
    first, second = Server(0, SMALL), Server(0, SMALL)
    try:
        assert first.token != second.token and len(first.token) >= 40
    finally:
        for server in (first, second):
            server.session.close()
            server.server_close()


def _slow_socket(port):
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(b"GET /api/frame HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nX-Slow: " % port)  # never finished
    return sock


def _closed_by_server(sock, deadline: float) -> bytes | None:
    """What the server sent before closing, or None if it still holds the socket open at `deadline`."""
    sock.settimeout(max(0.05, deadline - time.time()))
    received = b""
    try:
        while chunk := sock.recv(4096):
            received += chunk
    except TimeoutError:
        return None
    except ConnectionResetError:
        pass
    return received


def test_slow_clients_are_dropped_and_extra_connections_refused(monkeypatch):
    monkeypatch.setattr(Handler, "timeout", 3.0)  # READ_TIMEOUT_SECONDS, shortened for the test
    server = Server(0, SMALL)
    server.start()
    port = server.server_address[1]
    sockets = []
    try:
        sockets = [_slow_socket(port) for _ in range(MAX_CONNECTIONS + 8)]
        # the connections past the cap are answered 503 and closed at once, not queued
        refused = [_closed_by_server(s, time.time() + 2) for s in sockets[MAX_CONNECTIONS:]]
        assert all(r is not None and r.startswith(b"HTTP/1.1 503") for r in refused), refused
        # every half-sent request is dropped once it has been silent for the read timeout
        deadline = time.time() + 10
        held = [_closed_by_server(s, deadline) for s in sockets[:MAX_CONNECTIONS]]
        assert all(h is not None for h in held), f"{sum(h is None for h in held)} slow sockets still held"
        status, _, _ = _send(server, "GET", "/api/data", headers={security.TOKEN_HEADER: server.token})
        assert status == 200  # and the server serves again
    finally:
        for sock in sockets:
            sock.close()
        server.stop()


def test_head_on_the_event_stream_sends_no_body(server):
    with socket.create_connection(("127.0.0.1", server.server_address[1]), timeout=10) as sock:
        sock.sendall(b"HEAD /api/events HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n%s: %s\r\n\r\n"
                     % (server.server_address[1], security.TOKEN_HEADER.encode(), server.token.encode()))
        received = _closed_by_server(sock, time.time() + 10)
    assert received is not None and received.startswith(b"HTTP/1.1 200")
    assert received.endswith(b"\r\n\r\n")  # headers, then nothing
