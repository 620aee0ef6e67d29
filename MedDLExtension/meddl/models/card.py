"""The model card: what a model expects, what it produces, and where it comes from."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..errors import ModelError
from ..tasks import TASKS, get_task

INTENSITY_METHODS = ("none", "zscore", "range", "quantile_zscore")
REQUIRED_FIELDS = ("name", "task", "input.channels", "labels", "license")
SCHEMA = Path(__file__).with_name("card.schema.json")  # JSON Schema (draft 2020-12) of every card
# The most voxels a card may make MedDL allocate for one volume (a float32 one is then 8 GiB).
MAX_VOXELS = 2**31

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


@lru_cache(maxsize=1)
def card_validator() -> Any:
    """The draft 2020-12 validator of models/card.schema.json (Python tuples count as JSON arrays)."""
    import jsonschema  # imported on first use: light start-up for commands that read no card

    base = jsonschema.Draft202012Validator
    types = base.TYPE_CHECKER.redefine("array", lambda _checker, instance: isinstance(instance, (list, tuple)))
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    base.check_schema(schema)
    return jsonschema.validators.extend(base, type_checker=types)(schema)


_KINDS = {"integer": "an integer", "number": "a number", "string": "a string", "boolean": "true or false",
          "array": "a list", "object": "an object {...}", "null": "null"}
_BOUNDS = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<"}


def _field_path(parts: Any) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else str(part)
    return text


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _schema_message(error: Any) -> str:
    """One line for a jsonschema error: the field's path, what it must be, and what it is."""
    where, kind, rule, value = _field_path(error.absolute_path), error.validator, error.validator_value, error.instance
    subject = where or "the card"
    if kind == "type":
        wanted = [rule] if isinstance(rule, str) else [t for t in rule if t != "null"] or list(rule)
        return f"{subject} must be {' or '.join(_KINDS.get(t, t) for t in wanted)}, not {_shown(value)}"
    if kind in _BOUNDS:
        return f"{subject} must be {_BOUNDS[kind]} {rule}, not {_shown(value)}"
    if kind in ("enum", "const"):
        choices = rule if kind == "enum" else [rule]
        return f"{subject} must be one of {', '.join(json.dumps(c) for c in choices)}, not {_shown(value)}"
    if kind in ("minItems", "maxItems"):
        schema = error.schema
        if schema.get("minItems") == schema.get("maxItems"):
            return f"{subject} must hold {rule} values, not {len(value)}"
        return f"{subject} must hold {'at least' if kind == 'minItems' else 'at most'} {rule} values, not {len(value)}"
    if kind == "required":
        missing = [name for name in rule if name not in value]
        return f"{_field_path([*error.absolute_path, missing[0]])} is required"
    if kind == "minLength":
        return f"{subject} must not be empty"
    if kind == "pattern":
        return f"{subject} does not have the form {rule}: {_shown(value)}"
    if kind in ("anyOf", "oneOf") and error.schema.get("description"):
        return f"{subject} must be {error.schema['description']}, not {_shown(value)}"
    return f"{subject}: {error.message}"


def check_schema(data: Any, source: str = "model card") -> None:
    """Validate a card dictionary against models/card.schema.json; the best error becomes one ModelError line."""
    from jsonschema.exceptions import relevance

    error = max(card_validator().iter_errors(data), key=relevance, default=None)
    if error is not None:
        raise ModelError(f"{source}: {_schema_message(error)}")


def _check_sizes(card: ModelCard, source: str) -> None:
    """Refuse windows and input sizes whose volume alone would exceed MAX_VOXELS."""
    for name, size in (("inference.roi_size", card.roi_size), ("input.size", card.input_size)):
        if size and math.prod(size) > MAX_VOXELS:
            raise ModelError(f"{source}: {name} {list(size)} is more than {MAX_VOXELS} voxels")
    if card.input_size and len(card.input_size) != card.spatial_dims:
        raise ModelError(f"{source}: input.size {list(card.input_size)} must hold {card.spatial_dims} values "
                         f"(input.spatial_dims)")
    if card.mode == "threshold" and card.activation == "sigmoid" and not 0 < card.threshold < 1:
        raise ModelError(f"{source}: output.threshold must be between 0 and 1 after a sigmoid, not {card.threshold}")


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


def _check_finite(value: Any, source: str, where: str = "") -> None:
    """Refuse NaN and infinity anywhere in a card (JSON has neither, but Python's parser accepts both)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ModelError(f"{source}: {where or 'a field'} must be a finite number, not {value}")
    if isinstance(value, dict):
        for key, item in value.items():
            _check_finite(item, source, f"{where}.{key}" if where else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_finite(item, source, f"{where}[{index}]")


def card_from_dict(data: dict[str, Any], source: str = "model card") -> ModelCard:
    """Validate a card dictionary (required fields, task, models/card.schema.json, then what a schema cannot
    say); every problem is one ModelError that names the missing or wrong field."""
    if not isinstance(data, dict):
        raise ModelError(f"{source} must be a JSON object")
    missing = missing_fields(data)
    if missing:
        raise ModelError(f"{source} is missing required field(s): {', '.join(missing)}")
    task = get_task(data["task"], source)
    task.check_card(data, source)  # the task's own fields first: its messages say what the task expects
    check_schema(data, source)
    for key in ("input", "inference", "output", "labels", "network", "enhancement", "registration"):
        _check_finite(data.get(key), source, key)  # what computation reads; documentation fields may hold anything
    input_spec, inference, output = data["input"], data.get("inference", {}), data.get("output", {})
    intensity = input_spec.get("intensity") or {"method": "none"}
    if intensity.get("method") == "range" and float(intensity.get("a_min", 0)) >= float(intensity.get("a_max", 1)):
        raise ModelError(f"{source}: input.intensity.a_min must be below a_max")
    if intensity.get("method") not in INTENSITY_METHODS:
        raise ModelError(f"{source}: intensity method must be one of {', '.join(INTENSITY_METHODS)}")
    mode = output.get("mode", "argmax")
    if mode not in ("argmax", "threshold"):
        raise ModelError(f"{source}: output mode must be 'argmax' or 'threshold', not {mode!r}")
    spacing, roi = input_spec.get("spacing"), inference.get("roi_size")
    card = ModelCard(
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
    _check_sizes(card, source)
    return card


def read_card_json(path: str | Path) -> Any:
    """The JSON in a card file; a missing, unreadable or malformed file is a ModelError naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"model card not found: {path}") from None
    except (OSError, ValueError, RecursionError) as error:  # ValueError: bad JSON, bad UTF-8, huge numbers
        raise ModelError(f"model card {path} is not valid JSON: {error}") from None


def read_card(path: str | Path) -> ModelCard:
    return card_from_dict(read_card_json(path), f"model card {path}")
