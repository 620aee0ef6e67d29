"""One list of every model MedDL knows (catalogued and imported), with search and filters."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, Optional

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

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _accuracy(card: dict | None) -> str:
    items = (card or {}).get("accuracy") or []
    return "; ".join(f"{a.get('metric', '')} {a.get('value', '')} ({a.get('data', '')})" for a in items)


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
                    _accuracy(entry.get("card")), timing.get("cpu_seconds"), timing.get("gpu_seconds"), "catalog")


def _imported_row(model: store.InstalledModel) -> ModelRow:
    card_path = card_path_for(model.model_path)
    card = json.loads(card_path.read_text()) if card_path.is_file() else {}
    return ModelRow(model.id, card.get("title", model.id), card.get("task", "segmentation"),
                    card.get("input", {}).get("modality", ""), card.get("body_part", ""), card.get("license", ""),
                    card.get("description", ""), True, store.folder_size(model.folder), _accuracy(card),
                    None, None, "trained" if model.record.get("kind") == "trained" else "imported")


def model_rows(search: str = "", task: str = "", modality: str = "", body_part: str = "",
               installed: Optional[bool] = None) -> list[ModelRow]:
    """Every known model, filtered; search matches id, title, description, modality and body part."""
    rows = [_catalog_row(model_id) for model_id in catalog.entry_ids()]
    rows += [_imported_row(m) for m in store.list_installed() if not catalog.has_entry(m.id)]
    needle = search.lower()

    def text(row: ModelRow) -> str:
        return f"{row.id} {row.title} {row.description} {row.modality} {row.body_part}".lower()

    return [row for row in rows
            if (not needle or needle in text(row))
            and (not task or row.task == task)
            and (not modality or modality.lower() in row.modality.lower())
            and (not body_part or body_part.lower() in row.body_part.lower())
            and (installed is None or row.installed == installed)]
