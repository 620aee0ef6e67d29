"""The model card: what a model expects, what it produces, and where it comes from."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ModelError
from ..tasks import TASKS, get_task

INTENSITY_METHODS = ("none", "zscore", "range", "quantile_zscore")
REQUIRED_FIELDS = ("name", "task", "input.channels", "labels", "license")

# A distinct colour for each label without one (Slicer's generic anatomy palette, first entries).
DEFAULT_COLORS = [
    (0.50, 0.68, 0.50), (0.94, 0.82, 0.63), (0.69, 0.48, 0.39), (0.44, 0.72, 0.82),
    (0.85, 0.40, 0.30), (0.86, 0.80, 0.25), (0.56, 0.50, 0.80), (0.90, 0.60, 0.75),
]


@dataclass(frozen=True)
class Label:
    """One output label: its voxel value, name, RGB colour (0..1) and optional terminology."""

    value: int
    name: str
    color: tuple[float, float, float]
    terminology: dict[str, Any] | None = None


@dataclass(frozen=True)
class ModelCard:
    """Parsed and validated model card (see docs/MODEL_CARD.md for the JSON fields)."""

    name: str
    task: str
    channels: int
    labels: tuple[Label, ...]
    license: str
    title: str = ""
    description: str = ""
    modality: str = ""
    spacing: tuple[float, float, float] | None = None
    orientation: str | None = None
    intensity: dict[str, Any] = field(default_factory=lambda: {"method": "none"})
    roi_size: tuple[int, int, int] | None = None
    overlap: float = 0.25
    sw_batch_size: int = 1
    activation: str = "softmax"
    mode: str = "argmax"
    threshold: float = 0.5
    largest_component: bool = False
    fill_holes: bool = False
    network: dict[str, Any] | None = None
    spatial_dims: int = 3
    input_size: tuple[int, ...] | None = None
    saliency_layer: str | None = None
    provenance: str = ""
    accuracy: list[dict[str, Any]] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def out_channels(self) -> int:
        """Channels the network must produce for these labels (classes, for a classifier)."""
        rule = TASKS[self.task].labels
        if rule == "classes":
            return len(self.labels)
        if rule == "none":
            return self.channels
        if self.mode == "argmax":
            return max(label.value for label in self.labels) + 1
        return len(self.labels)


def _get(data: dict[str, Any], dotted: str) -> Any:
    value: Any = data
    for key in dotted.split("."):
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def missing_fields(data: dict[str, Any]) -> list[str]:
    """The required card fields that a card dictionary lacks or leaves empty."""
    task = TASKS.get(data["task"]) if isinstance(data.get("task"), str) else None
    required = [name for name in REQUIRED_FIELDS if name != "labels" or task is None or task.has_labels]
    return [name for name in required if _get(data, name) in (None, "", [])]


def parse_label_names(text: str, error: type[Exception] = ModelError) -> dict[int, str]:
    """'1:Liver,2:Spleen' -> {1: 'Liver', 2: 'Spleen'}; `error` is raised for anything else."""
    try:
        return {int(value): name.strip() for value, name in (item.split(":", 1) for item in text.split(","))}
    except ValueError:
        raise error(f"label names must look like '1:Liver,2:Spleen', not {text!r}") from None


def _parse_color(value: Any, index: int) -> tuple[float, float, float]:
    if value is None:
        return DEFAULT_COLORS[index % len(DEFAULT_COLORS)]
    if isinstance(value, str) and value.startswith("#") and len(value) == 7:
        return tuple(int(value[i : i + 2], 16) / 255.0 for i in (1, 3, 5))
    if isinstance(value, (list, tuple)) and len(value) == 3:
        scale = 255.0 if max(value) > 1 else 1.0
        return tuple(float(c) / scale for c in value)
    raise ModelError(f"model card: label colour {value!r} is neither '#rrggbb' nor three numbers")


def _parse_labels(items: Any, zero_allowed: bool = False) -> tuple[Label, ...]:
    if not isinstance(items, list) or not items:
        raise ModelError("model card: 'labels' must be a non-empty list of {value, name}")
    labels = []
    for index, item in enumerate(items):
        if not isinstance(item, dict) or "value" not in item or "name" not in item:
            raise ModelError(f"model card: label {index + 1} needs a 'value' and a 'name'")
        value = int(item["value"])
        if value < 0 or (value == 0 and not zero_allowed):
            raise ModelError(f"model card: label {item['name']!r} has value {value}; 0 is background")
        labels.append(Label(value, str(item["name"]), _parse_color(item.get("color"), index),
                            item.get("terminology")))
    if len({label.value for label in labels}) != len(labels):
        raise ModelError("model card: two labels share one value")
    return tuple(labels)


def card_from_dict(data: dict[str, Any], source: str = "model card") -> ModelCard:
    """Validate a card dictionary; every problem names the missing or wrong field."""
    if not isinstance(data, dict):
        raise ModelError(f"{source} must be a JSON object")
    missing = missing_fields(data)
    if missing:
        raise ModelError(f"{source} is missing required field(s): {', '.join(missing)}")
    task = get_task(data["task"], source)
    task.check_card(data, source)
    input_spec, inference, output = data["input"], data.get("inference", {}), data.get("output", {})
    intensity = input_spec.get("intensity") or {"method": "none"}
    if intensity.get("method") not in INTENSITY_METHODS:
        raise ModelError(f"{source}: intensity method must be one of {', '.join(INTENSITY_METHODS)}")
    mode = output.get("mode", "argmax")
    if mode not in ("argmax", "threshold"):
        raise ModelError(f"{source}: output mode must be 'argmax' or 'threshold', not {mode!r}")
    spacing, roi = input_spec.get("spacing"), inference.get("roi_size")
    return ModelCard(
        name=str(data["name"]), task=task.name, channels=int(input_spec["channels"]),
        labels=_parse_labels(data["labels"], task.labels == "classes") if task.has_labels else (),
        license=str(data["license"]),
        title=data.get("title", data["name"]), description=data.get("description", ""),
        modality=input_spec.get("modality", data.get("modality", "")),
        spacing=tuple(float(s) for s in spacing) if spacing else None,
        orientation=input_spec.get("orientation"), intensity=intensity,
        roi_size=tuple(int(r) for r in roi) if roi else None,
        overlap=float(inference.get("overlap", 0.25)), sw_batch_size=int(inference.get("sw_batch_size", 1)),
        activation=output.get("activation", "softmax" if mode == "argmax" else "sigmoid"), mode=mode,
        threshold=float(output.get("threshold", 0.5)),
        largest_component=bool(output.get("largest_component", False)),
        fill_holes=bool(output.get("fill_holes", False)), network=data.get("network"),
        spatial_dims=int(input_spec.get("spatial_dims", 3)),
        input_size=tuple(int(n) for n in input_spec["size"]) if input_spec.get("size") else None,
        saliency_layer=data.get("saliency", {}).get("target_layer"),
        provenance=data.get("provenance", ""), accuracy=list(data.get("accuracy", [])), raw=data,
    )


def read_card(path: str | Path) -> ModelCard:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"model card not found: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelError(f"model card {path} is not valid JSON: {error}") from None
    return card_from_dict(data, f"model card {path}")
