"""The HTTP side of ``qkv explore``: the standard library's ``ThreadingHTTPServer`` serving
one page (``static/``, read into memory at start: no path from a request reaches the file
system) and a small JSON API over ``api.Explorer``:

    GET  /                  the page
    GET  /static/NAME       its script and style sheet (only the files shipped in static/)
    GET  /api/info          the run: model, mode (text | translation | image | detection | none), layers,
                            heads, limits
    GET  /api/positions     a ViT's position-embedding similarity
    POST /api/text          {"text", "layer"} -> tokens and one layer's weights (heads x queries x keys)
    POST /api/translate     {"src", "tgt"?, "kind"?, "layer"} -> translation, tokens and weights
    POST /api/image         {"image": base64 or data: URL, "layer", "head_fusion", "discard_ratio"},
                            or the image file's bytes (Content-Type image/...) with those as ?query;
                            for a detector (DETR, Deformable DETR) {"image", "threshold"} -> the
                            detections and what each one's query looked at (``query_looks``)

Errors are JSON {"error": "..."}: 400 for a request the run cannot answer, 404 for an
unknown path, 405, 411, 413 for a body larger than the endpoint takes.
"""
from __future__ import annotations

import json
import sys
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from urllib.parse import parse_qs, urlsplit

from ..errors import ConfigError
from .api import BadRequest, Explorer, decode_base64_image

MAX_JSON_BODY = 64 * 1024          # text and translation requests
MAX_IMAGE_BODY = 16 * 1024 * 1024  # an image upload (base64 in JSON is 4/3 of the file)
TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
         ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".png": "image/png"}
SECURITY = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
            "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; "
                                       "script-src 'self'; connect-src 'self'; frame-ancestors 'none'"}


def static_files() -> dict[str, tuple[bytes, str]]:
    """Every file shipped in ``qkv/explore/static``: URL path -> (content, content type)."""
    out = {}
    for entry in resources.files(__package__).joinpath("static").iterdir():
        suffix = "." + entry.name.rsplit(".", 1)[-1]
        if entry.is_file() and suffix in TYPES:
            out[f"/static/{entry.name}"] = (entry.read_bytes(), TYPES[suffix])
    out["/"] = out["/static/index.html"]
    return out


class Handler(BaseHTTPRequestHandler):
    server_version = "qkv-explore"
    explorer: Explorer          # set on the subclass that make_server builds
    files: dict[str, tuple[bytes, str]]
    quiet = False

    # -- answers ----------------------------------------------------------------------------
    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in SECURITY.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, data: dict) -> None:
        self._send(status, json.dumps(data, separators=(",", ":"), allow_nan=False).encode(),
                   "application/json; charset=utf-8")

    def _error(self, status: int, message: str) -> None:
        self._json(status, {"error": message})

    def log_message(self, format, *args):  # noqa: A002 (the base class's name)
        if not self.quiet:
            super().log_message(format, *args)

    # -- routing ----------------------------------------------------------------------------
    def do_HEAD(self):
        self.do_GET()

    def do_GET(self):
        path = urlsplit(self.path).path
        if path in self.files:
            return self._send(200, *self.files[path])
        routes = {"/api/info": self.explorer.info, "/api/positions": self.explorer.positions}
        if path in routes:
            return self._answer(routes[path])
        if path in ("/api/text", "/api/translate", "/api/image"):
            return self._error(405, f"{path} takes POST")
        self._error(404, f"no such page: {path[:200]}")

    def do_POST(self):
        url = urlsplit(self.path)
        if url.path in ("/api/text", "/api/translate"):
            body = self._body(MAX_JSON_BODY)
            if body is None:
                return
            call = self.explorer.text if url.path == "/api/text" else self.explorer.translate
            return self._answer(lambda: call(self._parse_json(body)))
        if url.path == "/api/image":
            body = self._body(MAX_IMAGE_BODY)
            if body is None:
                return
            return self._answer(lambda: self._image(body, url.query))
        if url.path in self.files or url.path in ("/api/info", "/api/positions"):
            return self._error(405, f"{url.path} takes GET")
        self._error(404, f"no such endpoint: {url.path[:200]}")

    def _image(self, body: bytes, query: str) -> dict:
        kind = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if kind.startswith("image/") or kind == "application/octet-stream":  # the file itself, options in ?query
            options = {}
            for name, values in parse_qs(query).items():
                kind = {"layer": int, "discard_ratio": float, "threshold": float}.get(name, str)
                try:
                    options[name] = kind(values[-1])
                except ValueError:
                    raise BadRequest(f"?{name}={values[-1][:40]} is not a number") from None
            return self.explorer.image(body, options)
        options = self._parse_json(body)
        return self.explorer.image(decode_base64_image(options.get("image")), options)

    def _body(self, limit: int) -> bytes | None:
        """The request body, or None once an error has been sent (too large, no length)."""
        length = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding") or length is None:
            self.close_connection = True
            self._error(411, "send the body with a Content-Length")
            return None
        try:
            size = int(length)
            if size < 0:
                raise ValueError
        except ValueError:
            self.close_connection = True
            self._error(400, f"bad Content-Length {length[:40]!r}")
            return None
        if size > limit:
            self.close_connection = True  # the body is not read
            self._error(413, f"the request is {size:,} bytes; this endpoint takes at most {limit:,}")
            return None
        return self.rfile.read(size)

    @staticmethod
    def _parse_json(body: bytes) -> dict:
        try:
            data = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise BadRequest(f"the request body is not JSON ({e})") from None
        if not isinstance(data, dict):
            raise BadRequest(f"the request body must be a JSON object, got {type(data).__name__}")
        return data

    def _answer(self, compute) -> None:
        try:
            body = json.dumps(compute(), separators=(",", ":"), allow_nan=False).encode()
        except BadRequest as e:
            return self._error(400, str(e))
        except Exception as e:  # a bug, or weights that are not finite: say so without leaking internals
            traceback.print_exc(file=sys.stderr)
            return self._error(500, f"internal error ({type(e).__name__}); see the server's log")
        self._send(200, body, "application/json; charset=utf-8")


def make_server(explorer: Explorer, host: str = "127.0.0.1", port: int = 8000, *,
                quiet: bool = False) -> ThreadingHTTPServer:
    """An HTTP server (not yet serving) for one explorer; port 0 picks a free port."""
    handler = type("ExploreHandler", (Handler,), {"explorer": explorer, "files": static_files(), "quiet": quiet})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


def serve(run_dir, host: str = "127.0.0.1", port: int = 8000, *, out=sys.stdout) -> None:
    """Load the run's model and serve the explorer until interrupted (Ctrl-C)."""
    explorer = Explorer(run_dir)
    try:
        server = make_server(explorer, host, port)
    except OSError as e:  # the port is taken, the address is not this machine's
        raise ConfigError(f"cannot listen on {host}:{port} ({e.strerror or e}); choose another --port "
                          "(0 picks a free one) or --host") from e
    shown_host = server.server_address[0]
    url = f"http://{'[' + shown_host + ']' if ':' in shown_host else shown_host}:{server.server_address[1]}/"
    what = explorer.mode if explorer.mode != "none" else "nothing to show: " + explorer.reason
    print(f"qkv explore: {explorer.model_type} model of {run_dir} ({what})", file=out)
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"qkv explore: listening on {host}: anyone who can reach this machine can use the page", file=out)
    print(f"qkv explore: open {url}  (Ctrl-C stops)", file=out, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
