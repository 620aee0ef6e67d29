"""`meddl serve`: an authenticated HTTP server that runs MedDL worker requests for remote clients (docs/SERVER.md);
`meddl serve-key NAME --api-key-file F`: a new API key for it.

The server needs the `server` extra (FastAPI and uvicorn), imported only when `meddl serve` runs.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .. import __version__
from ..errors import MeddlError
from ..protocol import Result
from ..server import keys
from ..server.app import create_app, uvicorn_server
from ..server.settings import ServerSettings, default_work_dir
from .options import int_in, number_in

GRACEFUL_STOP_S = 5  # how long a stopping server lets open requests (a long poll, a download) finish


@dataclass(frozen=True)
class ServeResult(Result):
    url: str


@dataclass(frozen=True)
class ServeKeyResult(Result):
    name: str
    key_file: str


def add_commands(commands: argparse._SubParsersAction) -> None:
    serve = commands.add_parser("serve", help="serve MedDL jobs over HTTP to remote clients (needs the server extra)",
                                description="Run MedDL jobs for remote clients (Slicer, `meddl ... --server URL`) "
                                            "on this machine's models and devices. Every request needs an API key "
                                            "of --api-key-file (made with `meddl serve-key`).")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    serve.add_argument("--port", type=int_in(0, 65535), default=8765)
    serve.add_argument("--api-key-file", required=True, metavar="FILE",
                       help="the accepted keys, one NAME:SHA256 line each (`meddl serve-key` writes them)")
    serve.add_argument("--tls-cert", default=None, metavar="PEM", help="TLS certificate (with --tls-key): https")
    serve.add_argument("--tls-key", default=None, metavar="PEM", help="TLS private key")
    serve.add_argument("--models-dir", default=None, metavar="DIR",
                       help="the model library the server runs (default: $MEDDL_MODELS_DIR or the user's)")
    serve.add_argument("--max-upload-mb", type=number_in(0, 10**7, low_open=True), default=1024.0,
                       help="largest upload accepted (default 1024)")
    serve.add_argument("--max-jobs-per-key", type=int_in(1, 10000), default=4,
                       help="jobs a key may have queued or running at once (default 4)")
    serve.add_argument("--workers", type=int_in(1, 256), default=1,
                       help="worker processes running jobs side by side (default 1)")
    serve.add_argument("--work-dir", default=None, metavar="DIR",
                       help="the server's private folder for uploads and results (emptied at start; default: a "
                            "folder under the system's temporary folder)")
    serve.add_argument("--result-ttl-s", type=number_in(0, 10**8, low_open=True), default=3600.0,
                       help="results not fetched, and uploads not used, are removed after this many seconds")
    serve.add_argument("--allow-model-uploads", action="store_true",
                       help="let clients send their own models (never trusted to run code)")
    serve.add_argument("--allow-model-import", action="store_true",
                       help="let clients install catalogued models and import models into the server's library")
    key = commands.add_parser("serve-key", help="make an API key for `meddl serve` (printed once, stored hashed)")
    key.add_argument("name", help="who the key is for (letters, digits, . _ @ -)")
    key.add_argument("--api-key-file", required=True, metavar="FILE", help="the server's keys file (created 0600)")


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def run_serve(args: argparse.Namespace, progress) -> ServeResult:
    if bool(args.tls_cert) != bool(args.tls_key):
        raise MeddlError("--tls-cert and --tls-key go together")
    for option, path in (("--tls-cert", args.tls_cert), ("--tls-key", args.tls_key)):
        if path and not Path(path).is_file():
            raise MeddlError(f"{option} {path}: no such file")
    if not args.tls_cert and not _loopback(args.host):
        print(f"meddl serve: warning: listening on {args.host} without TLS: API keys and images cross the network "
              "unencrypted (give --tls-cert and --tls-key)", file=sys.stderr)
    settings = ServerSettings(
        key_file=Path(args.api_key_file),
        work_dir=Path(args.work_dir).absolute() if args.work_dir else default_work_dir(args.port),
        models_dir=Path(args.models_dir).absolute() if args.models_dir else None,
        max_upload_mb=args.max_upload_mb, max_jobs_per_key=args.max_jobs_per_key, workers=args.workers,
        result_ttl_s=args.result_ttl_s, allow_model_uploads=args.allow_model_uploads,
        allow_model_import=args.allow_model_import)
    app = create_app(settings)  # checks the keys and prepares the work folder before anything listens
    scheme = "https" if args.tls_cert else "http"
    url = f"{scheme}://{args.host}:{args.port}"
    extras = settings_summary(settings)
    print(f"meddl serve {__version__}: {url} (work folder {settings.work_dir}, {args.workers} worker(s)"
          f"{'; ' + extras if extras else ''})", file=sys.stderr)
    server = uvicorn_server(app, host=args.host, port=args.port, ssl_certfile=args.tls_cert, ssl_keyfile=args.tls_key,
                            server_header=False, timeout_graceful_shutdown=GRACEFUL_STOP_S,
                            log_level="info")  # the access log has the request line, never a header
    server.run()
    return ServeResult(url)


def run_serve_key(args: argparse.Namespace, progress) -> ServeKeyResult:
    key = keys.add_key(args.name, Path(args.api_key_file))
    print(key)
    print(f"meddl serve-key: added the key {args.name!r} to {args.api_key_file} (only its hash is stored; this is "
          "the only time the key is shown)", file=sys.stderr)
    return ServeKeyResult(args.name, str(args.api_key_file))


def settings_summary(settings: ServerSettings) -> Optional[str]:
    """What a server allows beyond running its library's models (for its start message)."""
    extras = [name for name, on in (("model uploads", settings.allow_model_uploads),
                                    ("model import", settings.allow_model_import)) if on]
    return f"allows {' and '.join(extras)}" if extras else None


RUNNERS = {"serve": run_serve, "serve-key": run_serve_key}
REQUESTS = ()
