"""The playground's HTTP server: the page, a JSON API and a server-sent-event stream of frames.

The standard library's `ThreadingHTTPServer` is enough for one local user (one thread per
connection; the event stream is plain chunks of text), so the playground needs no server
dependency. It listens on 127.0.0.1 only, and defends itself as `security.py` describes
(Host allow-list, Origin check, a per-server token, JSON-only writes); a request must arrive
within READ_TIMEOUT_SECONDS and at most MAX_CONNECTIONS are served at once.

    GET  /?token=T             the page            GET  /api/events     frames (text/event-stream)
    GET  /api/options          controls, limits    GET  /api/frame      the latest frame
    GET  /api/data             the data points     GET  /api/warp?activation=relu&angle=30
    GET  /api/regions          the exact partition of the region panel (polygons), when the net is piecewise linear
    POST /api/config           {field: value}      POST /api/control    {"action": "start"|"pause"|"step"|"reset"}
    POST /api/upload           {"name": F, "csv": text}   GET /api/export/model, /api/export/numbers (downloads)

Every refusal is a 4xx with {"error": message}; a failure inside a request is a 500 with
the message, and the server keeps serving either way.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import threading
import traceback
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
from matplotlib import colormaps

from geometry.data import REGRESSION_DATASETS
from geometry.io import to_jsonable
from playground import config as configuration
from playground import datasets, export, security, warp
from playground.session import Session

STATIC = Path(__file__).parent / "static"
PAGES = {"/": ("index.html", "text/html; charset=utf-8"), "/app.js": ("app.js", "text/javascript; charset=utf-8"),
         "/style.css": ("style.css", "text/css; charset=utf-8")}
# a CSV inside a JSON string: escaping can at most double it (a newline becomes \\n)
MAX_BODY = 2 * datasets.MAX_UPLOAD_BYTES + 2**16
KEEP_ALIVE_SECONDS = 10.0
READ_TIMEOUT_SECONDS = 15.0  # a client that sends nothing for this long is dropped (slowloris)
MAX_CONNECTIONS = 32  # served at once; more get a 503 and are closed at once
TOKEN_PAGE = """<!doctype html><meta charset="utf-8"><title>layer-geometry playground</title>
<p>This playground needs its token. Open the address that <code>python -m playground</code> printed
(it ends with <code>?token=...</code>).</p>"""


class RequestError(Exception):
    def __init__(self, status: HTTPStatus, message: str):
        super().__init__(message)
        self.status = status


def options() -> dict:
    """What the page builds its controls from: one source of truth for names and ranges."""
    lut = lambda name: np.round(colormaps[name](np.linspace(0, 1, 255))[:, :3] * 255).astype(int).tolist()  # noqa: E731
    return {
        "datasets": list(configuration.DATASETS), "layer_kinds": list(configuration.LAYER_KINDS),
        "classification_datasets": list(configuration.CLASSIFICATION_DATASETS),
        "regression_datasets": [*REGRESSION_DATASETS, "csv"], "problems": list(configuration.PROBLEMS),
        "regularizations": list(configuration.REGULARIZATIONS), "features": list(configuration.FEATURES),
        "max_batch": configuration.MAX_BATCH,
        "warp_activations": list(warp.ACTIVATIONS), "max_depth": configuration.MAX_DEPTH,
        "max_width": configuration.MAX_WIDTH, "resolutions": list(configuration.RESOLUTIONS),
        "default": configuration.as_json(configuration.Config()),
        "colormaps": {"viridis": lut("viridis"), "magma": lut("magma"), "tab20": lut("tab20")},
        "max_upload_bytes": datasets.MAX_UPLOAD_BYTES,
    }


class Handler(BaseHTTPRequestHandler):
    server_version = "layer-geometry-playground"
    protocol_version = "HTTP/1.1"
    default_request_version = "HTTP/1.0"  # an unparsable request still gets a status line, not bare HTML
    timeout = READ_TIMEOUT_SECONDS  # socketserver sets it on the connection: every read is bounded

    def send_error(self, code, message=None, explain=None):
        """The base class's own refusals (a garbage request line, over-long headers) as our JSON errors."""
        self.close_connection = True
        text = f"{int(code)} {message or HTTPStatus(code).phrase}" + (f": {explain}" if explain else "")
        body = json.dumps({"error": text}).encode()
        self.send_response(code, message)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD" and code >= 200 and code not in (204, 304):
            self.wfile.write(body)

    @property
    def session(self) -> Session:
        return self.server.session

    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        if self.server.verbose:
            super().log_message(format, *args)

    # ---- responses ----
    def _send(self, status: HTTPStatus, body: bytes, content_type: str, headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, record, status: HTTPStatus = HTTPStatus.OK, headers: dict | None = None) -> None:
        body = record.encode() if isinstance(record, str) else json.dumps(record).encode()
        self._send(status, body, "application/json", headers)

    def _error(self, status: HTTPStatus, message: str) -> None:
        self._json({"error": message}, status, {"Connection": "close"})
        self.close_connection = True

    def _body(self) -> bytes:
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            raise RequestError(HTTPStatus.LENGTH_REQUIRED, "send a Content-Length header with the body") from None
        if length < 0 or length > MAX_BODY:
            raise RequestError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                               f"body of {length} bytes; the limit is {MAX_BODY} bytes")
        return self.rfile.read(length)

    def _json_body(self) -> dict:
        try:
            record = json.loads(self._body() or b"null")
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise RequestError(HTTPStatus.BAD_REQUEST, f"the body is not JSON ({error})") from None
        except RecursionError:  # [[[[...]]]] 100 000 deep
            raise RequestError(HTTPStatus.BAD_REQUEST, "the body is JSON nested too deeply; send a flat object") from None
        if not isinstance(record, dict):
            raise RequestError(HTTPStatus.BAD_REQUEST, "the body must be a JSON object")
        return record

    # ---- dispatch ----
    def _guard(self, path: str, query: dict) -> None:
        """The defences of `security.py`, before anything else is read or done."""
        port = self.server.server_address[1]
        security.check_host(self.headers.get("Host"), port)
        security.check_origin(self.headers.get("Origin"), port)
        if path.startswith("/api/"):
            write = self.command == "POST"
            security.check_token(header=self.headers.get(security.TOKEN_HEADER),
                                 cookie=security.cookie_token(self.headers.get("Cookie"), port),
                                 query=query.get("token"), token=self.server.token, write=write)
            if write:
                security.check_json_content_type(self.headers.get("Content-Type"))

    def _handle(self, routes: dict) -> None:
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        route = routes.get(url.path)
        try:
            self._guard(url.path, query)
            if route is None:
                known = url.path in GET_ROUTES or url.path in POST_ROUTES or url.path in PAGES
                raise RequestError(HTTPStatus.METHOD_NOT_ALLOWED if known else HTTPStatus.NOT_FOUND,
                                   f"{self.command} {url.path} is not served"
                                   + (f"; use {'POST' if self.command == 'GET' else 'GET'}" if known else ""))
            route(self, url.path, query)
        except (RequestError, security.Forbidden) as error:
            self._error(error.status, str(error))
        except (configuration.ConfigError, ValueError) as error:
            self._error(HTTPStatus.BAD_REQUEST, str(error))
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as error:  # noqa: BLE001 - the server keeps serving; the page shows the message
            traceback.print_exc()
            self._error(HTTPStatus.INTERNAL_SERVER_ERROR, f"{type(error).__name__}: {error}")

    def do_GET(self):  # noqa: N802 - http.server's names
        self._handle(GET_ROUTES | {path: Handler._page for path in PAGES})

    def do_HEAD(self):  # noqa: N802
        self.do_GET()

    def do_POST(self):  # noqa: N802
        self._handle(POST_ROUTES)

    def _refuse(self):
        self._error(HTTPStatus.METHOD_NOT_ALLOWED, f"{self.command} is not served; use GET or POST")

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse  # noqa: N815

    # ---- routes ----
    def _page(self, path, query):
        name, content_type = PAGES[path]
        body = (STATIC / name).read_bytes()
        if path != "/":
            self._send(HTTPStatus.OK, body, content_type)
            return
        port, token = self.server.server_address[1], self.server.token
        from_query = security.same_token(query.get("token"), token)
        if not (from_query or security.same_token(security.cookie_token(self.headers.get("Cookie"), port), token)):
            self._send(HTTPStatus.FORBIDDEN, TOKEN_PAGE.encode(), content_type, {"Connection": "close"})
            self.close_connection = True
            return
        # the page reads its token here; no other origin can read this response (same-origin policy)
        body = body.replace(b"<head>", f'<head>\n  <meta name="playground-token" content="{token}">'.encode(), 1)
        headers = {"Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY"}
        if from_query:  # later visits (a shared link without the token, a reload) are let in by the cookie
            headers["Set-Cookie"] = (f"{security.cookie_name(port)}={token}; Path=/; HttpOnly; SameSite=Strict")
        self._send(HTTPStatus.OK, body, content_type, headers)

    def _no_icon(self, path, query):
        self._send(HTTPStatus.NO_CONTENT, b"", "image/x-icon")

    def _options(self, path, query):
        self._json(self.server.options)

    def _frame(self, path, query):
        _, frame = self.session.next_frame(0, timeout=30)
        if frame is None:
            raise RequestError(HTTPStatus.SERVICE_UNAVAILABLE, "no frame yet; try again in a moment")
        self._json(frame)

    def _data(self, path, query):
        self._json(self.session.points())

    def _regions(self, path, query):
        self._json(self.session.exact_regions())

    def _events(self, path, query):
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        if self.command == "HEAD":  # headers only: a HEAD response has no body
            return
        last = 0
        while not self.session.closed:
            sequence, frame = self.session.next_frame(last, KEEP_ALIVE_SECONDS)
            chunk = f"id: {sequence}\ndata: {frame}\n\n" if frame else ": waiting\n\n"  # a comment keeps it open
            self.wfile.write(chunk.encode())
            self.wfile.flush()
            last = sequence

    def _warp(self, path, query):
        self._json(warp.view(query.get("activation", "relu"), query.get("angle", "0")))

    def _export_numbers(self, path, query):
        body = json.dumps(to_jsonable(self.session.numbers()), indent=1, allow_nan=False).encode()
        self._send(HTTPStatus.OK, body, "application/json",
                   {"Content-Disposition": 'attachment; filename="playground-numbers.json"'})

    def _export_model(self, path, query):
        config, classes, state, points = self.session.snapshot()
        body = export.to_zip(config, classes, state, points)
        self._send(HTTPStatus.OK, body, "application/zip",
                   {"Content-Disposition": 'attachment; filename="playground-model.zip"'})

    def _configure(self, path, query):
        config = configuration.parse(self._json_body())
        self.session.configure(config)  # "csv" before any upload: datasets.load's ValueError, a 400
        self._json({"config": configuration.as_json(config), "query": configuration.to_query(config)})

    def _control(self, path, query):
        action = self._json_body().get("action")
        self.session.control(action)  # an unknown action: Session.control's ValueError, a 400
        self._json({"action": action})

    def _upload(self, path, query):
        record = self._json_body()
        name, text = record.get("name", "upload.csv"), record.get("csv")
        if not isinstance(name, str) or not re.fullmatch(r"[\w .()+-]{1,100}", name):
            raise RequestError(HTTPStatus.BAD_REQUEST, "the file name must be 1-100 letters, digits or . _ - ( ) +")
        if not isinstance(text, str):
            raise RequestError(HTTPStatus.BAD_REQUEST, 'send the file as {"name": ..., "csv": "<the CSV text>"}')
        problem = self.session.numbers()["config"]["problem"]
        x, y = datasets.parse_csv(text.encode(), name, problem)
        config = self.session.upload_data((x, y), name)
        self._json({"rows": len(x), "features": int(x.shape[1]),
                    "classes": int(y.max()) + 1 if problem == "classification" else None,
                    "config": configuration.as_json(config), "query": configuration.to_query(config)})


GET_ROUTES = {"/api/options": Handler._options, "/api/frame": Handler._frame, "/api/data": Handler._data,
              "/api/regions": Handler._regions,
              "/api/events": Handler._events, "/api/warp": Handler._warp, "/api/export/model": Handler._export_model,
              "/api/export/numbers": Handler._export_numbers, "/favicon.ico": Handler._no_icon}
POST_ROUTES = {"/api/config": Handler._configure, "/api/control": Handler._control, "/api/upload": Handler._upload}


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 2 * MAX_CONNECTIONS  # the listen backlog: a full one makes clients retry after 1 s

    def __init__(self, port: int = 0, config: configuration.Config = configuration.Config(), verbose: bool = False,
                 token: str | None = None):
        super().__init__(("127.0.0.1", port), Handler)
        self.token = security.new_token() if token is None else token
        self.session = Session(config)
        self.options = options()
        self.verbose = verbose
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._refusals = threading.BoundedSemaphore(MAX_CONNECTIONS)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/"

    @property
    def url(self) -> str:
        """The address to open: with the token, as the command prints it."""
        return f"{self.base_url}?token={self.token}"

    def process_request(self, request, client_address):
        if self._slots.acquire(blocking=False):
            try:
                super().process_request(request, client_address)
            except BaseException:
                self._slots.release()
                raise
        elif self._refusals.acquire(blocking=False):  # full: a short-lived thread says 503, never queues
            threading.Thread(target=self._refuse_busy, args=(request,), daemon=True).start()
        else:  # a flood: close at once
            self.shutdown_request(request)

    def _refuse_busy(self, request) -> None:
        body = json.dumps({"error": f"503: more than {MAX_CONNECTIONS} connections at once; try again"}).encode()
        try:
            request.settimeout(1.0)
            with contextlib.suppress(OSError):
                request.recv(65536)  # what the client sent: unread data would turn the close into a reset
            request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
            request.shutdown(socket.SHUT_WR)
            with contextlib.suppress(OSError):
                while request.recv(65536):  # until the client closes (or the timeout): then a clean close
                    pass
        except OSError:
            pass
        finally:
            request.close()
            self._refusals.release()

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def start(self) -> threading.Thread:
        """Serve from a background thread (tests, notebooks); `stop()` ends it."""
        thread = threading.Thread(target=self.serve_forever, name="playground-server", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self.session.close()
        self.shutdown()
        self.server_close()
