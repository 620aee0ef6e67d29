"""`meddl models ...`: the command-line face of the model library."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import ModelError
from ..models import catalog
from ..models.card import parse_label_names
from . import install, store
from .overview import model_rows


def _size(size: int | None) -> str:
    return "-" if size is None else f"{size / 1e6:.1f} MB"


def _card_fields(args: argparse.Namespace) -> dict:
    fields = {key: getattr(args, key) for key in ("name", "title", "task", "license", "description")}
    fields["input"] = {k: v for k, v in (("channels", args.channels), ("modality", args.modality)) if v is not None}
    if args.labels:
        fields["labels"] = [{"value": value, "name": name} for value, name in parse_label_names(args.labels).items()]
    if args.roi:
        fields["inference"] = {"roi_size": [int(n) for n in args.roi.split(",")]}
    return {key: value for key, value in fields.items() if value not in (None, {}, "")}


def run(args: argparse.Namespace, progress) -> dict:
    if args.action == "list":
        rows = model_rows(args.search, args.task, args.modality, args.body_part, True if args.installed else None)
        if args.json:
            print(json.dumps([row.as_dict() for row in rows], indent=1))
        for row in [] if args.json else rows:
            state = "installed" if row.installed else "available"
            print(f"{row.id:36} {row.task:13} {row.modality:8} {state:10} {_size(row.size_bytes):>9}  {row.title}")
        return {"count": len(rows)}
    if args.action == "info":
        rows = [row for row in model_rows() if row.id == args.id]
        if not rows:
            raise ModelError(f"no model {args.id!r} in the catalog or the model folder {store.models_dir()}")
        details = rows[0].as_dict()
        if catalog.has_entry(args.id):
            details["source"] = catalog.get_entry(args.id)["source"]
        print(json.dumps(details, indent=1))
        return {"model": details}
    if args.action == "install":
        installed = install.install(args.id, progress, trust=args.trust_model)
        return {"installed": installed.id, "folder": str(installed.folder)}
    if args.action == "import":
        installed = install.import_model(Path(args.path), args.id, _card_fields(args), args.trust_model)
        print(f"imported {installed.id} into {installed.folder}")
        return {"installed": installed.id, "folder": str(installed.folder)}
    freed = store.remove(args.id)
    print(f"removed {args.id}: {_size(freed)} freed")
    return {"removed": args.id, "freed_bytes": freed}
