"""The playground's defences: a local server that any web page the user visits can reach.

The threat model is Jupyter's. A page on any site can make the user's browser send requests to
127.0.0.1 (cross-site request forgery), and a site whose DNS name is re-bound to 127.0.0.1 can
even read the answers (DNS rebinding). So every request passes these checks:

* **Host allow-list.** The Host header must name this server as 127.0.0.1, localhost or [::1]
  with its port; anything else (a re-bound name such as attacker.example:PORT) is a 403, so a
  rebinding page never gets a byte of data.
* **Origin.** When the browser sends an Origin (every cross-origin request, and same-origin
  POSTs), it must be this server's own origin; a page on another origin gets a 403.
* **A per-server token** (random, 256 bits, new each start): the command prints the address
  with `?token=...`, as Jupyter does. Opening that address sets an HttpOnly, SameSite=Strict
  cookie and hands the page the token in a <meta> tag; every /api/ request must carry the token
  (cookie, `X-Playground-Token` header, or `?token=`), and every POST must carry it in the
  header. A custom header cannot be sent cross-origin without a CORS preflight, which this
  server refuses, so a form or `text/plain` POST from another site can never change state.
* **JSON only for writes.** POST bodies must be `Content-Type: application/json` (what a form
  cannot send without a preflight).

Slow or numerous clients are bounded by the server (`server.py`): a read timeout per request
and a cap on concurrent connections.
"""

from __future__ import annotations

import hmac
import secrets
from http import HTTPStatus
from http.cookies import CookieError, SimpleCookie

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
TOKEN_HEADER = "X-Playground-Token"


class Forbidden(Exception):
    """A request refused by a defence; the message says which and what to do."""

    status = HTTPStatus.FORBIDDEN


def new_token() -> str:
    return secrets.token_urlsafe(32)


def cookie_name(port: int) -> str:
    # one cookie per port: cookies are shared between ports of one host, so two playgrounds
    # (or another local server) must not overwrite or read each other's token
    return f"playground-token-{port}"


def allowed_hosts(port: int) -> frozenset[str]:
    return frozenset(f"{name}:{port}" for name in LOOPBACK_NAMES)


def allowed_origins(port: int) -> frozenset[str]:
    return frozenset(f"http://{host}" for host in allowed_hosts(port))


def check_host(host: str | None, port: int) -> None:
    if host is None or host.strip().lower() not in allowed_hosts(port):
        raise Forbidden(f"Host {host!r} is not this server; open http://127.0.0.1:{port}/ (the playground answers "
                        "only to 127.0.0.1, localhost or [::1] with its port, against DNS rebinding)")


def check_origin(origin: str | None, port: int) -> None:
    if origin is not None and origin.strip().lower() not in allowed_origins(port):
        raise Forbidden(f"requests from origin {origin!r} are refused: only the playground's own page "
                        f"(http://127.0.0.1:{port}) may call its API")


def same_token(given: str | None, token: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), token.encode())


def cookie_token(cookie_header: str | None, port: int) -> str | None:
    if not cookie_header:
        return None
    try:
        morsel = SimpleCookie(cookie_header).get(cookie_name(port))
    except CookieError:
        return None
    return None if morsel is None else morsel.value


def check_token(*, header: str | None, cookie: str | None, query: str | None, token: str, write: bool) -> None:
    """A read needs the token by any route; a write needs it in the header (a cookie rides along
    on requests other local pages make, so it proves nothing about who sent a write)."""
    if write:
        if not same_token(header, token):
            raise Forbidden(f"a state-changing request needs the server's token in the {TOKEN_HEADER} header "
                            "(the playground's page sends it; open the address `python -m playground` printed)")
        return
    if not any(same_token(given, token) for given in (header, cookie, query)):
        raise Forbidden("this request needs the server's token: open the address `python -m playground` printed "
                        "(it ends with ?token=...)")


def check_json_content_type(content_type: str | None) -> None:
    media_type = (content_type or "").split(";")[0].strip().lower()
    if media_type != "application/json":
        raise Forbidden(f"POST bodies must be sent as Content-Type: application/json, got {content_type!r}")
