"""The runners of `meddl serve` and `meddl serve-key` (their options are in meddl.cli.serve). The command line
names them by module path, so that no other `meddl` command imports the server to start."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .. import __version__
from ..errors import MeddlError
from ..protocol import Result
from . import keys
from .app import create_app, uvicorn_server
from .settings import ServerSettings, default_work_dir
from .transport import is_loopback

GRACEFUL_STOP_S = 5  # how long a stopping server lets open requests (a long poll, a download) finish


@dataclass(frozen=True)
class ServeResult(Result):
    url: str


@dataclass(frozen=True)
class ServeKeyResult(Result):
    name: str
    key_file: str


def run_serve(args: argparse.Namespace, progress) -> ServeResult:
    if bool(args.tls_cert) != bool(args.tls_key):
        raise MeddlError("--tls-cert and --tls-key go together")
    for option, path in (("--tls-cert", args.tls_cert), ("--tls-key", args.tls_key)):
        if path and not Path(path).is_file():
            raise MeddlError(f"{option} {path}: no such file")
    if not args.tls_cert and not is_loopback(args.host):
        print(f"meddl serve: warning: listening on {args.host} without TLS: API keys and images cross the network "
              "unencrypted (give --tls-cert and --tls-key)", file=sys.stderr)
    settings = ServerSettings(
        key_file=Path(args.api_key_file),
        work_dir=Path(args.work_dir).absolute() if args.work_dir else default_work_dir(args.port),
        models_dir=Path(args.models_dir).absolute() if args.models_dir else None,
        max_upload_mb=args.max_upload_mb, max_jobs_per_key=args.max_jobs_per_key, workers=args.workers,
        result_ttl_s=args.result_ttl_s, session_idle_s=args.session_idle_s,
        allow_model_uploads=args.allow_model_uploads, allow_model_import=args.allow_model_import)
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
