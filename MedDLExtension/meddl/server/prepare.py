"""Preparing a checked job (`plan`) to run: its folder, with its inputs (uploads linked, zips unpacked) and
output folders, its worker command line, and the server paths to hide from its client (`hiding`).
"""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from ..errors import InputError, ModelError
from ..models.formats import MODEL_SUFFIXES, is_bundle, is_promptable_folder, nnunet_results_folder
from ..protocol import Request
from .jobs import Job
from .plan import JobPlan
from .settings import ServerSettings, server_folders
from .uploads import Upload, extract_zip
from .workdir import WorkDir

if TYPE_CHECKING:
    from .sessions import Session


def build_job(settings: ServerSettings, plan: JobPlan, uploads: list[Upload], work: WorkDir, owner: str,
              session: Optional[Session] = None) -> Job:
    """The job's folder with its inputs (zips unpacked) and output folders, and its command line; a job of a
    `session` takes the session's fixed fields (its files stay where the session keeps them)."""
    job_id = secrets.token_urlsafe(24)
    folder = work.jobs / job_id
    folder.mkdir(mode=0o700)
    try:
        (folder / "in").mkdir(mode=0o700)
        (folder / "out").mkdir(mode=0o700)
        replacements: list[tuple[str, str]] = []  # server path prefix -> what the client sees
        paths = place_inputs(settings, uploads, folder, replacements)
        values = dict(plan.values)
        set_inputs(values, plan, paths)
        _set_outputs(values, plan, folder, replacements)
        if session is not None:
            values.update(session.values)
            replacements += session.replacements
        replacements.append((str(folder), "<job folder>"))
        replacements += server_folders(settings, work)
        request_type = plan.request_type
        try:
            argv = request_type(**values).argv()
        except (TypeError, ValueError) as error:
            raise InputError(f"{request_type.__name__}: {error}") from None
        replacements.sort(key=lambda pair: len(pair[0]), reverse=True)
        placement = ({"session": session.id, "slot": session.slot} if session is not None
                     else {"release_files": _one_off_session(request_type, values)})
        return Job(job_id, owner, request_type.__name__, argv, folder, replacements, **placement)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def _one_off_session(request_type: type[Request], values: dict[str, Any]) -> list[str]:
    """The files a worker remembers a session by, for a request that has sessions run without one: the worker is
    told to forget that session once the job ends (its files are gone, it can never be used again)."""
    fixed = getattr(request_type, "session_fields", ())
    return [values[key] for key in request_type.file_inputs if key in fixed and isinstance(values.get(key), str)]


def place_inputs(settings: ServerSettings, uploads: list[Upload], folder: Path,
                 replacements: list[tuple[str, str]]) -> dict[str, Path]:
    """Each upload in `folder`/in, a job's or a session's (a zip unpacked, a file linked or copied):
    its path by upload id."""
    paths: dict[str, Path] = {}
    for upload in uploads:
        if upload.suffix == ".zip":
            root = folder / "in" / upload.id
            unpacked = extract_zip(upload.path, root, settings.max_unpacked_bytes)
            paths[upload.id] = _unpacked_model(unpacked) or unpacked
            replacements.append((str(root), f"upload:{upload.id}"))
        else:
            paths[upload.id] = folder / "in" / f"{upload.id}{upload.suffix}"
            try:
                os.link(upload.path, paths[upload.id])
            except OSError:
                shutil.copyfile(upload.path, paths[upload.id])
        replacements.append((str(paths[upload.id]), f"upload:{upload.id}"))
    return paths


def set_inputs(values: dict[str, Any], plan: JobPlan, paths: dict[str, Path]) -> None:
    """The inputs' (and an uploaded model's) `upload:ID` references replaced by their paths in the job's folder."""
    for key in plan.request_type.file_inputs:
        value = values.get(key)
        if isinstance(value, str):
            values[key] = str(paths[value[len("upload:"):]])
        elif value is not None:
            values[key] = tuple(str(paths[item[len("upload:"):]]) for item in value)
    if plan.model_upload is not None:
        _check_model_upload(paths[plan.model_upload])
        values["model"] = str(paths[plan.model_upload])


def _set_outputs(values: dict[str, Any], plan: JobPlan, folder: Path, replacements: list[tuple[str, str]]) -> None:
    """Each output field's folder `out/<field>` made, and its names turned into paths there."""
    for key in plan.request_type.file_outputs:
        value = values.get(key)
        if value is None:
            continue
        place = folder / "out" / key
        place.mkdir(mode=0o700)
        replacements.append((f"{place}{os.sep}", f"file:{key}/"))
        values[key] = str(place / value) if isinstance(value, str) else tuple(str(place / v) for v in value)


def _is_model_folder(folder: Path) -> bool:
    return is_bundle(folder) or nnunet_results_folder(folder) is not None or is_promptable_folder(folder)


def _unpacked_model(folder: Path) -> Optional[Path]:
    """The model file an unpacked zip holds when it holds one model file (and its .json card) and nothing else."""
    if _is_model_folder(folder):
        return None
    entries = list(folder.iterdir())
    models = [path for path in entries if path.is_file() and path.suffix.lower() in MODEL_SUFFIXES]
    if len(models) == 1 and all(path.is_file() and (path in models or path.suffix.lower() == ".json")
                                for path in entries):
        return models[0]
    return None


def _check_model_upload(path: Path) -> None:
    if path.is_dir() and not _is_model_folder(path):
        raise ModelError("a model upload is a zip of a MONAI bundle, an nnU-Net results folder or an nnInteractive "
                         "model folder, or of one model file "
                         f"({', '.join(MODEL_SUFFIXES)}) with its .json card")
