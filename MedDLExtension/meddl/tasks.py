"""The task registry: the one place where a task (segmentation, classification, ...) plugs into MedDL.

Each entry declares the task's name, what its model cards must hold, the command-line module that
adds its commands, runs them and builds the worker requests it serves, and the function the model
library runs a new model of this task with. The command line, the worker, the library installer,
card validation, the catalog schema test and the packaging test all read this registry.

Entries name their code as module paths, resolved on use: reading the registry imports neither
torch nor the tasks' own packages, so Slicer's process can list tasks, and card validation (which
every task's code uses) can read the registry without an import cycle.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable

from .errors import ModelError


@dataclass(frozen=True)
class Task:
    """One kind of model and job.

    labels: "named" (label values >= 1 with names, value 0 is background), "classes" (class names,
    value 0 allowed) or "none" (outputs are images or fields).
    card_check: "module:function(data, source)" raising ModelError for task-specific card fields.
    commands: the `meddl.cli` module with `add_commands(commands)`, `RUNNERS` (command -> runner)
    and the request classes of the commands it serves.
    dry_run: "module:function(loaded_model)" that runs a loaded model once on a small blank input (promptable
    models, which MedDL opens as sessions rather than loads: "module:function(path, trust)").
    module: the Slicer module (a folder of MedDLExtension) whose panel runs this task.
    """

    name: str
    title: str
    labels: str
    commands: str
    dry_run: str
    module: str
    card_check: str = ""
    article: str = "a"

    @property
    def has_labels(self) -> bool:
        return self.labels != "none"

    def commands_module(self) -> ModuleType:
        return importlib.import_module(self.commands)

    def run_dry(self, *arguments: Any) -> Any:
        return resolve(self.dry_run)(*arguments)

    def check_card(self, data: dict[str, Any], source: str) -> None:
        if self.card_check:
            resolve(self.card_check)(data, source)

    def described(self) -> str:
        """'a segmentation model', 'an enhancement model'."""
        return f"{self.article} {self.name} model"


def resolve(reference: str) -> Callable:
    """The function a "module:function" reference names, imported now."""
    module, function = reference.split(":")
    return getattr(importlib.import_module(module), function)


TASKS: dict[str, Task] = {task.name: task for task in (
    Task("segmentation", "Segmentation", "named", "meddl.cli.segment", "meddl.segmentation.predict:dry_run",
         "MedDLSegmentation"),
    Task("classification", "Classification", "classes", "meddl.cli.classify",
         "meddl.classification.predict:dry_run", "MedDLClassification"),
    Task("enhancement", "Enhancement", "none", "meddl.cli.enhance", "meddl.enhancement.pretrained:dry_run",
         "MedDLEnhancement", card_check="meddl.enhancement.pretrained:check_card", article="an"),
    Task("registration", "Registration", "none", "meddl.cli.register", "meddl.registration.learned:dry_run",
         "MedDLRegistration"),
    Task("promptable", "Promptable segmentation", "named", "meddl.cli.interact", "meddl.interactive.families:dry_run",
         "MedDLSegmentation"),
)}


def task_names() -> tuple[str, ...]:
    return tuple(TASKS)


def get_task(name: str, source: str = "model card") -> Task:
    """The registered task, or a ModelError that lists the known ones."""
    if not isinstance(name, str) or name not in TASKS:
        raise ModelError(f"{source}: task {name!r} is not one of {', '.join(TASKS)}")
    return TASKS[name]


def require_task(card: Any, expected: str) -> None:
    """Refuse a model of another task: 'model X is an enhancement model, not a segmentation model'."""
    if card.task != expected:
        actual = TASKS[card.task].described() if card.task in TASKS else f"a {card.task} model"
        raise ModelError(f"model {card.name!r} is {actual}, not {TASKS[expected].described()}")
