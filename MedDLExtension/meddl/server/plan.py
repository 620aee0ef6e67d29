"""Checking a job a client submits: `plan_job` turns its JSON into a `JobPlan` or says what is wrong with it.

A job names a registered worker request and gives its fields as JSON. Every field is checked against the
request's annotation; no text value reads as a command-line option; inputs are only `upload:ID` references,
outputs only plain file names, a model only an id of the server's library (or, with --allow-model-uploads, an
upload); trust is never given to a model by a client.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
from dataclasses import dataclass
from typing import Any, Optional

from ..errors import InputError, MeddlError, ModelError, OutputError
from ..protocol import Request
from ..tasks import TASKS
from .settings import ServerSettings, known_model
from .uploads import REFERENCE_PATTERN

MAX_TEXT = 4096  # characters in one text field
MAX_ITEMS = 10000  # items in one list field


class RequestRefused(MeddlError):
    """A job the server does not run (an unknown request, one marked local-only, a disabled feature)."""

    exit_code = 2


def request_types() -> dict[str, type[Request]]:
    """Every registered worker request by class name (the tasks' command modules and the model library's),
    resolved on use as the task registry does."""
    modules = [task.commands_module() for task in TASKS.values()]
    modules.append(importlib.import_module("meddl.cli.models"))
    return {request.__name__: request for module in modules for request in module.REQUESTS}


# ---- one field


def _type_text(annotation: Any) -> str:
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", repr(annotation))
    text = text.replace(" ", "").replace("typing.", "").replace("Tuple[", "tuple[")
    if text.startswith("Optional[") and text.endswith("]"):
        return text[len("Optional["):-1] + "|None"
    return text


def _split_top(text: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for index, char in enumerate(text):
        depth += char == "["
        depth -= char == "]"
        if char == "," and depth == 0:
            parts.append(text[start:index])
            start = index + 1
    parts.append(text[start:])
    return parts


def check_value(name: str, type_text: str, value: Any) -> Any:
    """A JSON value checked (and converted: lists to tuples) against a request field's annotation (the types
    requests use: str, bool, int, float, tuples of them, each optional); any other type is refused."""
    kind = type_text
    if kind.endswith("|None") or kind.startswith("None|"):
        kind = kind[:-len("|None")] if kind.endswith("|None") else kind[len("None|"):]
        if value is None:
            return None
    problem = f"field {name!r} must be {kind}"
    if kind == "str":
        if not isinstance(value, str) or len(value) > MAX_TEXT or "\0" in value:
            raise InputError(f"{problem} (text of at most {MAX_TEXT} characters)")
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise InputError(problem)
        return value
    if kind == "int":
        if not isinstance(value, int) or isinstance(value, bool):
            raise InputError(problem)
        return value
    if kind == "float":
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise InputError(problem)
        return float(value)
    if kind.startswith("tuple[") and kind.endswith("]"):
        items = _split_top(kind[len("tuple["):-1])
        if not isinstance(value, (list, tuple)) or len(value) > MAX_ITEMS:
            raise InputError(f"{problem} (a list)")
        if len(items) == 2 and items[1] == "...":
            return tuple(check_value(name, items[0], item) for item in value)
        if len(value) != len(items):
            raise InputError(f"{problem} (a list of {len(items)})")
        return tuple(check_value(name, item_type, item) for item_type, item in zip(items, value))
    raise RequestRefused(f"field {name!r}: the server cannot take values of type {type_text}")


def check_not_option(name: str, value: Any) -> None:
    """Refuse a text value (or list item) that the worker's command line would read as an option: the worker
    parses `--folds 0 --model /x --trust-model` as three options, not as folds."""
    if isinstance(value, str) and value.startswith("-"):
        raise InputError(f"field {name!r}: {value[:40]!r} starts with '-': the server does not take values that "
                         "read as command-line options")
    if isinstance(value, (list, tuple)):
        for item in value:
            check_not_option(name, item)


def check_output_name(name: str, field: str) -> str:
    """A plain file name for an output: no folders, not `.` or `..`, printable, at most 255 bytes."""
    if (not name or name in (".", "..") or "/" in name or "\\" in name or name != name.strip()
            or not name.isprintable() or len(name.encode("utf-8", "surrogateescape")) > 255):
        raise OutputError(f"{field}: {name[:80]!r} is not a plain file name; an output is named without folders "
                          "(the server decides where it is written)")
    return name


def _strings(value: Any) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


@dataclass
class JobPlan:
    """A checked job: the request type, its checked fields, and the uploads it takes."""

    request_type: type[Request]
    values: dict[str, Any]
    upload_ids: list[str]
    model_upload: Optional[str] = None



# ---- a whole job


def plan_job(settings: ServerSettings, registry: dict[str, type[Request]], data: Any) -> JobPlan:
    """Check a job's JSON: {"command", "request", "fields"}; raise a MeddlError saying what is wrong."""
    request_type = _request_type(settings, registry, data)
    fields = {field.name: field for field in dataclasses.fields(request_type) if field.init}
    values = _checked_values(settings, request_type, fields, data.get("fields", {}))
    upload_ids = _input_uploads(request_type, values)
    model_upload = _model_upload(settings, values.get("model") if "model" in fields else None)
    if model_upload is not None:
        upload_ids.append(model_upload)
    _check_outputs(request_type, values)
    return JobPlan(request_type, values, upload_ids, model_upload)


def _request_type(settings: ServerSettings, registry: dict[str, type[Request]], data: Any) -> type[Request]:
    """The request a job names, if this server runs it for a client."""
    if not isinstance(data, dict) or not isinstance(data.get("fields", {}), dict):
        raise InputError('a job is a JSON object {"command": ..., "request": ..., "fields": {...}}')
    name, command = data.get("request"), data.get("command")
    request_type = registry.get(name) if isinstance(name, str) else None
    if request_type is None or (command is not None and command != request_type.command):
        raise RequestRefused(f"the server has no request {str(name)[:60]!r} for the command {str(command)[:40]!r}")
    if not request_type.remote:
        raise RequestRefused(f"{name} runs only on the computer that holds its files, not on a server")
    if request_type.command == "models" and not settings.allow_model_import:
        raise RequestRefused("this server does not install or import models for its clients "
                             "(it was started without --allow-model-import)")
    return request_type


def _checked_values(settings: ServerSettings, request_type: type[Request], fields: dict[str, dataclasses.Field],
                    given: dict[str, Any]) -> dict[str, Any]:
    """The job's fields checked against the request's; never a value that reads as an option, never trust."""
    unknown = sorted(set(given) - set(fields))
    if unknown:
        raise RequestRefused(f"{request_type.__name__} has no field {', '.join(map(repr, unknown))[:200]}")
    values = {key: check_value(key, _type_text(fields[key].type), value) for key, value in given.items()}
    for key, value in values.items():
        if key not in request_type.file_outputs:  # outputs become paths in the job's folder
            check_not_option(key, value)
    if "trust_model" in fields:
        values["trust_model"] = False  # trust is given when a model enters the server's library, never by a client
    if values.get("install_as") is not None and not settings.allow_model_import:
        raise RequestRefused("this server does not add models to its library for its clients (it was started "
                             "without --allow-model-import)")
    return values


def _input_uploads(request_type: type[Request], values: dict[str, Any]) -> list[str]:
    """The ids of the uploads the job's inputs name (each input is an `upload:ID`)."""
    upload_ids = []
    for key in request_type.file_inputs:
        for item in _strings(values.get(key)):
            match = REFERENCE_PATTERN.match(item)
            if not match:
                raise InputError(f"{key}: {item[:80]!r} is not an upload; an input is 'upload:ID', the answer to "
                                 "PUT /v1/uploads")
            upload_ids.append(match.group(1))
    return upload_ids


def _model_upload(settings: ServerSettings, model: Any) -> Optional[str]:
    """The upload a `model` field names, if it names one (and the server allows it); otherwise `model` must be a
    model of the server's library."""
    if not isinstance(model, str):
        return None
    match = REFERENCE_PATTERN.match(model)
    if match and settings.allow_model_uploads:
        return match.group(1)
    if match:
        raise ModelError("this server runs only the models of its library (GET /v1/models lists them); it was "
                         "started without --allow-model-uploads")
    if not known_model(settings, model):
        raise ModelError(f"model {model[:80]!r} is not a model of this server's library (GET /v1/models lists "
                         "them); a server takes a model id, never a path")
    return None


def _check_outputs(request_type: type[Request], values: dict[str, Any]) -> None:
    """Every output is a plain file name, none twice in a field."""
    for key in request_type.file_outputs:
        names = _strings(values.get(key))
        for item in names:
            check_output_name(item, key)
        if len(set(names)) != len(names):
            raise OutputError(f"{key}: the same output name twice")
