"""`meddl models ...`: the command-line face of the model library, and the install and import requests."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ..errors import ModelError
from ..library.overview import model_rows
from ..models import catalog, store
from ..models.card import parse_label_names
from ..protocol import Request, Result, options
from ..tasks import task_names
from .options import add_progress, add_trust, voxel_counts

# The import form: card fields a user may have to fill in (option name, label in Slicer's form, default).
CARD_FORM = (("task", "Task", "segmentation"), ("channels", "Input channels", "1"),
             ("labels", "Labels (1:Name,2:Name)", ""), ("license", "Licence", ""), ("modality", "Modality", ""),
             ("roi", "Patch size (96,96,96)", ""))


@dataclass(frozen=True)
class LibraryResult(Result):
    action: str
    model_id: str = ""
    folder: str = ""
    count: int = 0
    freed_bytes: int = 0
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class InstallRequest(Request):
    """Download, verify and validate a catalogued model into the library."""

    command = "models"
    result_type = LibraryResult
    arg_names = {"model_id": "id"}
    model_id: str
    trust_model: bool = False

    def argv(self) -> list[str]:
        return [self.command, "install", self.model_id, *options((("--trust-model", self.trust_model),))]


@dataclass(frozen=True)
class ImportRequest(Request):
    """Import a bundle folder or zip, TorchScript file or checkpoint; `form` fills missing card fields."""

    command = "models"
    result_type = LibraryResult
    file_inputs = ("path",)
    arg_names = {"model_id": "id"}
    path: str
    model_id: Optional[str] = None
    form: tuple[tuple[str, str], ...] = ()
    trust_model: bool = False

    def argv(self) -> list[str]:
        known = {name for name, _label, _default in CARD_FORM}
        values = dict(self.form)
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"not fields of the import form: {', '.join(unknown)}")
        return [self.command, "import", str(self.path), *options(
            (("--id", self.model_id), *((f"--{name}", values.get(name) or None) for name in sorted(known)),
             ("--trust-model", self.trust_model)))]


def add_commands(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("models", help="the model library: list, info, install, import, remove")
    actions = parser.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="every model MedDL knows, with filters")
    listing.add_argument("--search", default="", help="text in the id, title or description")
    listing.add_argument("--task", default="", choices=("", *task_names()))
    listing.add_argument("--modality", default="")
    listing.add_argument("--body-part", default="")
    listing.add_argument("--installed", action="store_true", help="only models ready to run")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    info = actions.add_parser("info", help="everything about one model")
    info.add_argument("id")
    install = actions.add_parser("install", help="download, verify and install a catalogued model")
    install.add_argument("id")
    install.add_argument("--trust-model", action="store_true", help="allow its executable config expressions")
    add_progress(install)
    imported = actions.add_parser("import", help="add a bundle folder/zip, TorchScript file or checkpoint")
    imported.add_argument("path")
    imported.add_argument("--id", default=None, help="library id (default: from the card or file name)")
    for name in ("name", "title", "license", "modality", "description"):
        imported.add_argument(f"--{name}", default=None, help=f"card field '{name}' if the card lacks it")
    imported.add_argument("--task", default=None, choices=task_names(), help="card field 'task' if the card lacks it")
    imported.add_argument("--channels", type=int, default=None, help="input channels")
    imported.add_argument("--labels", default=None, help="labels as '1:Liver,2:Spleen'")
    imported.add_argument("--roi", default=None, type=voxel_counts(3), help="patch size as '96,96,96'")
    add_trust(imported)
    remove = actions.add_parser("remove", help="delete an installed model and free its disk space")
    remove.add_argument("id")


def _size(size: int | None) -> str:
    return "-" if size is None else f"{size / 1e6:.1f} MB"


def _clean(text: Any) -> str:
    """Text from a card or catalog made safe for a terminal: control characters (escape sequences, bidi
    overrides) dropped, line breaks and tabs turned into spaces."""
    return "".join(ch if ch.isprintable() else " " if ch.isspace() else "" for ch in str(text))


def _card_fields(args: argparse.Namespace) -> dict:
    fields = {key: getattr(args, key) for key in ("name", "title", "task", "license", "description")}
    fields["input"] = {k: v for k, v in (("channels", args.channels), ("modality", args.modality)) if v is not None}
    if args.labels:
        fields["labels"] = [{"value": value, "name": name} for value, name in parse_label_names(args.labels).items()]
    if args.roi:
        fields["inference"] = {"roi_size": list(args.roi)}
    return {key: value for key, value in fields.items() if value not in (None, {}, "")}


def run(args: argparse.Namespace, progress) -> LibraryResult:
    store.clean_stale()  # what a killed install, import or removal left behind
    if args.action == "list":
        rows = model_rows(args.search, args.task, args.modality, args.body_part, True if args.installed else None)
        if args.json:  # json.dumps escapes control characters (ensure_ascii)
            print(json.dumps([row.as_dict() for row in rows], indent=1))
        for row in [] if args.json else rows:
            state = "broken" if row.broken else "installed" if row.installed else "available"
            title = (row.title if not row.broken else f"{row.title} ({row.broken})" if row.origin == "catalog"
                     else row.broken)
            print(_clean(f"{row.id:36} {_clean(row.task):13} {_clean(row.modality):8} {state:10} "
                         f"{_size(row.size_bytes):>9}  {_clean(title)}"))
        return LibraryResult("list", count=len(rows))
    if args.action == "info":
        rows = [row for row in model_rows() if row.id == args.id]
        if not rows:
            raise ModelError(f"no model {args.id!r} in the catalog or the model folder {store.models_dir()}")
        details = rows[0].as_dict()
        if catalog.has_entry(args.id):
            entry = catalog.get_entry(args.id)
            details["source"] = entry["source"]
            details["notes"] = entry.get("notes", "")
            details["run"] = "meddl " + " ".join(catalog.run_command(args.id))
        print(json.dumps(details, indent=1))
        return LibraryResult("info", args.id, details=details)
    if args.action in ("install", "import"):
        from ..library import install  # loads torch: it runs the model once before listing it

        if args.action == "install":
            installed = install.install(args.id, progress, trust=args.trust_model)
        else:
            installed = install.import_model(Path(args.path), args.id, _card_fields(args), args.trust_model)
            print(_clean(f"imported {installed.id} into {installed.folder}"))
        return LibraryResult(args.action, installed.id, str(installed.folder))
    freed = store.remove(args.id)
    print(_clean(f"removed {args.id}: {_size(freed)} freed"))
    return LibraryResult("remove", args.id, freed_bytes=freed)


RUNNERS = {"models": run}
REQUESTS = (InstallRequest, ImportRequest)
