"""The worker protocol's typed messages: the requests a front end sends and the results it reads back.

A request is a dataclass that knows its command and builds the command line the worker parses (the
same parser as `meddl ...`, so a request and a typed command are checked alike). A command's runner
returns a result dataclass; the `done` event carries its fields, and `Request.read_result` turns that
event back into the same dataclass on the other side. MedDLLib builds requests and reads results only
through these types, never by hand.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any, ClassVar

JOB_MARKER = "meddl worker: job "  # the worker writes this + the job's id on stderr as each job starts


class Result:
    """Base of every command's result: a dataclass whose fields travel in the `done` event."""

    def as_event(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_event(cls, event: dict[str, Any]):
        names = {field.name for field in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in event.items() if key in names})


class Request:
    """Base of every worker request: a dataclass that builds its command line."""

    command: ClassVar[str]
    result_type: ClassVar[type[Result]]
    file_inputs: ClassVar[tuple[str, ...]] = ()  # fields naming input files or folders (uploaded to a server)
    file_outputs: ClassVar[tuple[str, ...]] = ()  # fields naming output files or folders (fetched from a server)
    remote: ClassVar[bool] = True  # whether a MedDL server runs this request
    arg_names: ClassVar[dict[str, str]] = {}  # field -> the command line's name for it, where they differ

    def argv(self) -> list[str]:
        raise NotImplementedError

    def read_result(self, event: dict[str, Any]) -> Result:
        """The typed result of this request from the worker's `done` event."""
        return self.result_type.from_event(event)


def options(pairs: Iterable[tuple[str, Any]]) -> list[str]:
    """Command-line options from (flag, value) pairs: None and False are left out, True is a bare flag,
    a list repeats nothing but follows its flag."""
    arguments: list[str] = []
    for flag, value in pairs:
        if value is None or value is False:
            continue
        if value is True:
            arguments.append(flag)
        elif isinstance(value, (list, tuple)):
            arguments += [flag, *(str(item) for item in value)]
        else:
            arguments += [flag, str(value)]
    return arguments
