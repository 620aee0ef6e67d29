"""A loopback HTTP file server for download tests: files by URL path, Range requests, extra headers per path,
one transfer that breaks half way, and a record of every request."""

from __future__ import annotations

import http.server
import threading


class FileServer(http.server.ThreadingHTTPServer):
    """Serves `files` ({URL path: bytes}) on 127.0.0.1 with Range support and per-path `headers` (e.g. a Link
    header per listing page); set `drop` to a path to break its next transfer half way. `requests` holds
    (path, Range header) of every request."""

    def __init__(self, files: dict[str, bytes], headers: dict[str, dict] | None = None) -> None:
        self.files, self.headers, self.requests, self.drop = files, headers or {}, [], None
        super().__init__(("127.0.0.1", 0), _Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's naming
        server: FileServer = self.server
        server.requests.append((self.path, self.headers.get("Range")))
        if self.path not in server.files:
            self.send_error(404)
            return
        payload = server.files[self.path]
        start = int(self.headers["Range"].split("=")[1].split("-")[0]) if self.headers.get("Range") else 0
        if start and start >= len(payload):
            self.send_error(416)
            return
        body = payload[start:]
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(body)))
        for name, value in server.headers.get(self.path, {}).items():
            self.send_header(name, value)
        self.end_headers()
        if server.drop == self.path:
            server.drop = None
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.connection.shutdown(2)  # the connection breaks mid-transfer
            return
        self.wfile.write(body)

    def log_message(self, *args):
        pass
