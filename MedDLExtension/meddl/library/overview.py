"""One list of every model MedDL knows (catalogued and imported), with search and filters."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, Optional

from ..errors import ModelError
from ..models import catalog, store
from ..models.formats import card_path_for


@dataclass(frozen=True)
class ModelRow:
    """What the model selectors and `meddl models list` show for one model."""

    id: str
    title: str
    task: str
    modality: str
    body_part: str
    license: str
    description: str
    installed: bool
    size_bytes: Optional[int]
    accuracy: str
    cpu_seconds: Optional[float]
    gpu_seconds: Optional[float]
    origin: str
    broken: str = ""  # why a library entry cannot be used (its record or card is damaged); "" when it can

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _accuracy(card: dict | None) -> str:
    items = (card or {}).get("accuracy") or []
    items = [a for a in items if isinstance(a, dict)] if isinstance(items, list) else []
    return "; ".join(f"{a.get('metric', '')} {a.get('value', '')} ({a.get('data', '')})" for a in items)


def _text(value: Any, default: str = "") -> str:
    """A card field as text: a user's card may hold any JSON value where a string belongs."""
    return value if isinstance(value, str) else default if value is None else json.dumps(value)


def _library_problem(model_id: str) -> str:
    """Why the library folder of a downloaded catalog entry cannot be used, or "" (none, or fine)."""
    if "python_package" in catalog.get_entry(model_id)["source"]:
        return ""  # its weights come with the package; a library folder of that name is never used
    try:
        installed = store.installed(model_id)
    except ModelError as error:
        return str(error)
    if installed is not None and installed.record.get("kind") != "catalog":
        return (f"the library folder {model_id!r} holds a model that was not installed from the catalog; "
                f"`meddl models remove {model_id}` deletes it")
    return ""


def _catalog_row(model_id: str) -> ModelRow:
    entry = catalog.get_entry(model_id)
    timing = entry.get("timing", {})
    ready = catalog.is_installed(model_id)
    if not ready:
        size = entry.get("size_bytes")
    elif "python_package" in entry["source"]:
        size = sum(path.stat().st_size for path in catalog.entry_files(model_id).values())
    else:
        size = store.folder_size(store.installed(model_id).folder)
    return ModelRow(model_id, entry["title"], entry["task"], entry.get("modality", ""), entry.get("body_part", ""),
                    entry["license"], entry.get("description", ""), ready, size,
                    _accuracy(entry.get("card")), timing.get("cpu_seconds"), timing.get("gpu_seconds"), "catalog",
                    _library_problem(model_id))


def _imported_row(model: store.InstalledModel) -> ModelRow:
    origin = "trained" if model.record.get("kind") == "trained" else "imported"
    card_path = card_path_for(model.model_path)
    try:
        card = json.loads(card_path.read_text(encoding="utf-8")) if card_path.is_file() else {}
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as error:
        return _broken_row(store.BrokenModel(model.id, model.folder, f"its card is not readable JSON ({error})"),
                           origin)
    if not isinstance(card, dict):
        return _broken_row(store.BrokenModel(model.id, model.folder, "its card is not a JSON object"), origin)
    inputs = card.get("input") if isinstance(card.get("input"), dict) else {}
    return ModelRow(model.id, _text(card.get("title"), model.id), _text(card.get("task"), "segmentation"),
                    _text(inputs.get("modality")), _text(card.get("body_part")), _text(card.get("license")),
                    _text(card.get("description")), True, _size_of(model.folder), _accuracy(card),
                    None, None, origin)


def _broken_row(model: store.BrokenModel, origin: str = "imported") -> ModelRow:
    """A library folder that cannot run: listed (not ready), so that the user sees why and can remove it."""
    reason = f"{model.reason}; `meddl models remove {model.id}` deletes it"
    return ModelRow(model.id, model.id, "", "", "", "", reason, False, _size_of(model.folder), "", None, None,
                    origin, reason)


def _size_of(folder) -> Optional[int]:
    try:
        return store.folder_size(folder)
    except OSError:  # removed or changed while it was measured
        return None


def model_rows(search: str = "", task: str = "", modality: str = "", body_part: str = "",
               installed: Optional[bool] = None) -> list[ModelRow]:
    """Every known model, filtered; search matches id, title, description, modality and body part."""
    rows = [_catalog_row(model_id) for model_id in catalog.entry_ids()]
    usable, broken = store.library_contents()
    rows += [_imported_row(m) for m in usable if not catalog.has_entry(m.id)]
    rows += [_broken_row(m) for m in broken if not catalog.has_entry(m.id)]
    return filter_rows(rows, search, task, modality, body_part, installed)


def filter_rows(rows: list[ModelRow], search: str = "", task: str = "", modality: str = "", body_part: str = "",
                installed: Optional[bool] = None) -> list[ModelRow]:
    """The rows that match: search in id, title, description, modality and body part; the other filters exact
    (task, installed) or contained (modality, body part)."""
    needle = search.lower()

    def text(row: ModelRow) -> str:
        return f"{row.id} {row.title} {row.description} {row.modality} {row.body_part}".lower()

    return [row for row in rows
            if (not needle or needle in text(row))
            and (not task or row.task == task)
            and (not modality or modality.lower() in row.modality.lower())
            and (not body_part or body_part.lower() in row.body_part.lower())
            and (installed is None or row.installed == installed)]
