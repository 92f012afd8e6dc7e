"""The static server of the web app: the page, the npm files it needs, and one bundle.

Stdlib only (no TensorFlow, no runtime): the page does all the work in the browser
(LiteRT.js and SentencePiece compiled to WebAssembly), so this server only hands out
files, read-only, on 127.0.0.1:

  /                      static/index.html
  /static/<path>         edge/web/static/ (the page's modules and styles)
  /node_modules/<path>   edge/web/node_modules/, only the packages in NPM_PACKAGES
  /bundle/<path>         the bundle directory (manifest.json, model.tflite, spm.model, ...)
  /server.json           {"bundle": the bundle directory}, for the page's error messages

Anything else, a path that leaves its root (`..`, symlinks out of it, encoded slashes),
or a method other than GET/HEAD gets an error status. Every response has `no-store`
caching, so a bundle replaced on disk is what the page hashes next time, and the
cross-origin isolation headers (COOP/COEP), which give the page fine-grained timers.
"""
from __future__ import annotations

import json
import mimetypes
import os
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

WEB_DIR = Path(__file__).resolve().parent
STATIC_DIR = WEB_DIR / "static"
NODE_MODULES = WEB_DIR / "node_modules"
# The npm packages the page imports (see the import map in static/index.html).
NPM_PACKAGES = ("@litertjs/core", "@litertjs/wasm-utils", "@sctg/sentencepiece-js")
SETUP_HINT = "run `make setup` (or `npm ci` in edge/web)"

MIME_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".wasm": "application/wasm",
    ".map": "application/json",
    ".txt": "text/plain; charset=utf-8",
    ".png": "image/png",
    ".svg": "image/svg+xml",
    ".tflite": "application/octet-stream",
    ".model": "application/octet-stream",
}


def mime_type(path: Path) -> str:
    return MIME_TYPES.get(path.suffix.lower()) \
        or mimetypes.guess_type(path.name)[0] or "application/octet-stream"


def missing_npm_packages(node_modules: Path = NODE_MODULES) -> list[str]:
    """The packages of NPM_PACKAGES that are not installed under `node_modules`."""
    return [p for p in NPM_PACKAGES if not (node_modules / p / "package.json").is_file()]


def resolve_inside(root: Path, relative: str) -> Path | None:
    """`root/relative` as a real path if it is a file inside `root` (after symlinks), else
    None. `relative` is a decoded URL path without its leading slash."""
    if "\x00" in relative or "\\" in relative:
        return None
    parts = [p for p in relative.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        return None
    root = root.resolve()
    try:
        path = root.joinpath(*parts).resolve()
    except (OSError, ValueError):
        return None
    if path != root and root not in path.parents:
        return None
    return path if path.is_file() else None


class WebApp:
    """What a server serves: the bundle directory, the static dir and node_modules."""

    def __init__(self, bundle_dir: str | os.PathLike, static_dir: Path = STATIC_DIR,
                 node_modules: Path = NODE_MODULES):
        self.bundle_dir = Path(bundle_dir).resolve()
        self.static_dir = static_dir
        self.node_modules = node_modules

    def file_for(self, url_path: str) -> Path | None:
        """The file a GET of `url_path` (already split from its query) returns, or None."""
        path = unquote(url_path, errors="strict")
        if path in ("/", "/index.html"):
            return resolve_inside(self.static_dir, "index.html")
        for prefix, root in (("/static/", self.static_dir), ("/bundle/", self.bundle_dir)):
            if path.startswith(prefix):
                return resolve_inside(root, path[len(prefix):])
        if path.startswith("/node_modules/"):
            rest = path[len("/node_modules/"):]
            package = next((p for p in NPM_PACKAGES if rest.startswith(p + "/")), None)
            if package is None:
                return None
            return resolve_inside(self.node_modules / package, rest[len(package) + 1:])
        return None

    def server_info(self) -> bytes:
        return json.dumps({"bundle": str(self.bundle_dir)}).encode()


class Handler(BaseHTTPRequestHandler):
    server_version = "edge-web"
    app: WebApp = None        # set on the subclass that make_server builds
    verbose = False

    def log_message(self, format, *args):  # noqa: A002 (the base class' name)
        if self.verbose:
            super().log_message(format, *args)

    def _headers(self, status: int, content_type: str, length: int) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(length))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        # Cross-origin isolation (everything here is same-origin): performance.now() at
        # 5 us instead of 100 us, for the latencies the page shows.
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        self.end_headers()

    def _send(self, status: int, body: bytes, content_type: str, head: bool) -> None:
        self._headers(status, content_type, len(body))
        if not head:
            self.wfile.write(body)

    def _get(self, head: bool) -> None:
        url_path = urlsplit(self.path).path
        if url_path == "/server.json":
            self._send(HTTPStatus.OK, self.app.server_info(), "application/json", head)
            return
        try:
            path = self.app.file_for(url_path)
        except UnicodeDecodeError:
            path = None
        if path is None:
            self._send(HTTPStatus.NOT_FOUND, f"not found: {url_path}\n".encode(),
                       "text/plain; charset=utf-8", head)
            return
        try:
            data = path.read_bytes()
        except OSError:
            self._send(HTTPStatus.FORBIDDEN, b"cannot read that file\n",
                       "text/plain; charset=utf-8", head)
            return
        self._send(HTTPStatus.OK, data, mime_type(path), head)

    def do_GET(self):  # noqa: N802 (http.server's name)
        self._get(head=False)

    def do_HEAD(self):  # noqa: N802
        self._get(head=True)

    def _refuse(self):
        self._send(HTTPStatus.METHOD_NOT_ALLOWED, b"read-only server\n",
                   "text/plain; charset=utf-8", head=False)

    do_POST = do_PUT = do_DELETE = do_PATCH = _refuse  # noqa: N815


def make_server(bundle_dir: str | os.PathLike, port: int = 0, host: str = "127.0.0.1",
                verbose: bool = False, **app_kw) -> ThreadingHTTPServer:
    """A server for `bundle_dir` bound to host:port (0: any free port), not yet serving."""
    handler = type("BoundHandler", (Handler,), {"app": WebApp(bundle_dir, **app_kw),
                                                "verbose": verbose})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


def url_of(server: ThreadingHTTPServer) -> str:
    host, port = server.server_address[:2]
    return f"http://{host}:{port}/"


def serve_in_thread(bundle_dir: str | os.PathLike, **kw) -> tuple[ThreadingHTTPServer, str]:
    """(server, url) serving `bundle_dir` from a daemon thread; `server.shutdown()` stops
    it (for tests and notebooks)."""
    server = make_server(bundle_dir, **kw)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, url_of(server)


__all__ = ["NPM_PACKAGES", "WebApp", "make_server", "missing_npm_packages", "mime_type",
           "resolve_inside", "serve_in_thread", "url_of"]
