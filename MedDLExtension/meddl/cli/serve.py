"""`meddl serve`: an authenticated HTTP server that runs MedDL worker requests for remote clients (docs/SERVER.md);
`meddl serve-key NAME --api-key-file F`: a new API key for it.

The runners live in meddl.server.commands, named here by module path and imported only when one of these commands
runs: other commands (and every worker's start) do not load the server, nor FastAPI and uvicorn (the `server`
extra).
"""

from __future__ import annotations

import argparse

from .options import int_in, number_in


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
    serve.add_argument("--session-idle-s", type=number_in(0, 10**8, low_open=True), default=900.0,
                       help="an interactive (promptable) session with no interaction for this many seconds is closed "
                            "and its worker's memory freed")
    serve.add_argument("--allow-model-uploads", action="store_true",
                       help="let clients send their own models (never trusted to run code)")
    serve.add_argument("--allow-model-import", action="store_true",
                       help="let clients install catalogued models and import models into the server's library")
    key = commands.add_parser("serve-key", help="make an API key for `meddl serve` (printed once, stored hashed)")
    key.add_argument("name", help="who the key is for (letters, digits, . _ @ -)")
    key.add_argument("--api-key-file", required=True, metavar="FILE", help="the server's keys file (created 0600)")


RUNNERS = {"serve": "meddl.server.commands:run_serve", "serve-key": "meddl.server.commands:run_serve_key"}
