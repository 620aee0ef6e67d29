"""Running a task over a cohort on a Ray cluster: one model-holding actor per worker (a GPU each, or a share of
the CPUs), each case handed to whichever actor is free, a case whose worker died retried on another, and the
same output folder, summary and `resume` as a run on this machine (runner.run_batch).

Ray is an optional extra (`pip install "meddl[cluster]"`), imported only here and only when asked for."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import socket
import sys
import threading
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from ..errors import DeviceError, MeddlError
from ..progress import Progress, no_progress
from .cases import Case
from .runner import BatchOutcome, CaseTask, CohortClock, CohortLedger, run_case
from .summary import FAILED, CaseRecord

INSTALL_HINT = 'running cases on a Ray cluster (--ray) needs the optional package ray: pip install "meddl[cluster]"'
# A case whose worker dies this many times is recorded as failed; a worker's place where actors die this many
# times in a row while starting is given up.
MAX_ATTEMPTS = 3
ANSI_COLOUR = re.compile(r"\x1b\[[0-9;]*m")
EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit): ")


def run_batch_on_ray(task: CaseTask, cases: list[Case], folder: Path, resume: bool = False,
                     progress: Progress | None = None, source: Path | None = None, address: str = "auto",
                     workers: int | None = None, cpus_per_worker: float = 1.0) -> BatchOutcome:
    """Run `task` on every case on a Ray cluster, writing into `folder` (which every node must see at the same
    path); a failed case is recorded and the run goes on, as with `run_batch`.

    `address`: "auto" (the cluster RAY_ADDRESS or `ray start` names, else a new one on this machine, stopped at
    the end), "local" (always a new one), "host:port" or "ray://host:port". `workers`: model-holding actors
    (default: one per GPU, else one per `cpus_per_worker` cores)."""
    ray = import_ray()
    report = progress or no_progress
    ledger = CohortLedger(task, cases, folder, resume, source)
    if ledger.todo:
        clock = CohortClock(len(ledger.todo), report)

        def finished(case: Case, record: CaseRecord) -> None:
            ledger.record(replace(record, inputs=list(case.inputs)))  # as given, not as sent to the workers
            clock.finished(ledger.records[case.id])

        with ray_connection(ray, address):
            ledger.publish()  # the output folder is made once the cluster answers (a bad address leaves none)
            count, options = worker_plan(ray, task, workers, cpus_per_worker, len(ledger.todo))
            report(0.0, f"starting {count} Ray worker(s) ({len(ledger.records)} of {len(cases)} cases already done)")
            with CaseWorkers(ray, task, count, options) as pool:
                pool.run(ledger.todo, ledger.folder.absolute(), finished)
    return ledger.outcome(report)


def import_ray() -> Any:
    """The ray module, or a DeviceError saying how to install it (the compute asked for is not available)."""
    try:
        import ray
    except ImportError:
        raise DeviceError(INSTALL_HINT) from None
    return ray


@contextlib.contextmanager
def ray_connection(ray: Any, address: str) -> Iterator[None]:
    """Connected to a Ray cluster for the block: the one this process already uses (left as it is), or the one
    `address` names, disconnected at the end (a cluster this call started is stopped with it).

    Ray's messages stay off stdout, which carries the JSON-lines protocol: the workers' output is not sent to
    the driver (it stays in Ray's session logs), Ray logs only warnings (to stderr), what its threads print
    goes to stderr (CallerStdout), and no dashboard starts."""
    with ray_prints_to_stderr():
        if ray.is_initialized():
            yield
            return
        check_reachable(address)
        try:
            ray.init(address=None if address == "auto" else address, include_dashboard=False, log_to_driver=False,
                     logging_level=logging.WARNING, configure_logging=True)
        except (ConnectionError, ValueError, RuntimeError, TimeoutError) as error:
            raise DeviceError(f"cannot connect to the Ray cluster at {address}: {brief(error)}") from None
        try:
            yield
        finally:
            with contextlib.redirect_stdout(sys.stderr):  # Ray prints the messages it held back as it disconnects
                ray.shutdown()


def check_reachable(address: str, timeout: float = 10.0) -> None:
    """Refuse a cluster address nothing answers at (Ray itself would keep retrying without end)."""
    if address in ("auto", "local"):
        return
    rest = address.removeprefix("ray://")
    host, _, port = rest.rpartition(":") if ":" in rest else (rest, "", "10001" if rest != address else "")
    if not host or not port.isdigit():
        raise DeviceError(f"--ray {address}: give 'auto', host:port or ray://host:port")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as error:
        raise DeviceError(f"cannot reach the Ray cluster at {address}: {error.strerror or error}") from None


class CallerStdout:
    """sys.stdout while Ray runs: the calling thread's writes go to stdout, other threads' to stderr. Ray's
    background threads print there (e.g. "(raylet) A worker died ...", sent to stdout even without
    log_to_driver), and stdout carries the JSON-lines protocol."""

    def __init__(self, stdout: Any) -> None:
        self.stdout, self.caller = stdout, threading.get_ident()

    def target(self) -> Any:
        return self.stdout if threading.get_ident() == self.caller else sys.stderr

    def write(self, text: str) -> int:
        return self.target().write(text)

    def flush(self) -> None:
        self.target().flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stdout, name)


@contextlib.contextmanager
def ray_prints_to_stderr() -> Iterator[None]:
    """sys.stdout replaced by a CallerStdout for the block (put back unless someone replaced it meanwhile)."""
    original = sys.stdout
    if original is None:
        yield
        return
    sys.stdout = CallerStdout(original)
    try:
        yield
    finally:
        if isinstance(sys.stdout, CallerStdout) and sys.stdout.stdout is original:
            sys.stdout = original


def worker_plan(ray: Any, task: CaseTask, workers: int | None, cpus_per_worker: float,
                cases: int) -> tuple[int, dict[str, float]]:
    """How many actors to start (never more than the cases) and each one's Ray resources: `cpus_per_worker`
    cores, and a whole GPU (a fair share when more workers than GPUs are asked for) unless the task runs on
    the CPU. Warns when no node is big enough for one worker (they wait until one joins)."""
    total = ray.cluster_resources()
    gpus = int(total.get("GPU", 0)) if task_device(task) != "cpu" else 0
    if workers is None:
        workers = gpus or max(1, int(total.get("CPU", 1) // cpus_per_worker))
    options: dict[str, float] = {"num_cpus": cpus_per_worker}
    if gpus:
        options["num_gpus"] = 1 / math.ceil(workers / gpus)
    largest = max((node["Resources"].get("CPU", 0) for node in ray.nodes() if node.get("Alive")), default=0)
    if largest < cpus_per_worker:
        print(f"meddl: no node of the Ray cluster has {cpus_per_worker:g} CPUs (the most is {largest:g}): the "
              "workers wait until one joins (see --cpus-per-worker)", file=sys.stderr)
    return max(1, min(workers, cases)), options


def task_device(task: CaseTask) -> str:
    """The device the task asked for ("auto", "cpu", "cuda", ...), from its `device` or `options["device"]`."""
    options = getattr(task, "options", None)
    device = getattr(task, "device", None) or (options.get("device") if isinstance(options, dict) else None)
    return str(device or "auto")


class CaseWorker:
    """A Ray actor's body: the task with its model loaded once, running the cases it is handed."""

    def __init__(self, task: CaseTask, threads: int) -> None:
        with contextlib.suppress(OSError, ValueError, AttributeError):  # stdout belongs to the driver's protocol
            sys.stdout.flush()
            os.dup2(sys.stderr.fileno(), 1)
        import torch

        torch.set_num_threads(threads)  # the cores Ray gave this worker, not every core of the node
        self.task = task

    def load(self) -> MeddlError | None:
        """Load the model; the user's error (e.g. a model not found) is returned for the driver to raise."""
        try:
            self.task.load(no_progress)
        except MeddlError as error:
            return error
        return None

    def run(self, case: Case, folder: str) -> CaseRecord:
        """Read and process one case into `folder`; its failure is the record's, as on one machine."""
        try:
            data, error = self.task.read(case), None
        except Exception as failure:  # recorded as the case's failure by run_case
            data, error = None, failure
        return run_case(self.task, case, data, error, Path(folder), no_progress)


@dataclass
class Slot:
    """One worker's place: its current actor and how many times in a row an actor there died starting."""

    actor: Any = None
    failed_starts: int = 0


class CaseWorkers:
    """The actors of one run and the cases in flight: each free actor takes the next case; an actor that died
    is replaced (its case goes back to the front of the queue, up to MAX_ATTEMPTS times); every actor is killed
    at the end, also when the driver is interrupted."""

    def __init__(self, ray: Any, task: CaseTask, count: int, options: dict[str, float]) -> None:
        self.ray, self.task, self.options = ray, task, options
        self.actor_class = ray.remote(CaseWorker).options(max_restarts=0, **options)
        self.lost = lost_worker_errors(ray)
        self.jobs: dict[Any, tuple[Slot, Case | None]] = {}  # a call in flight -> its slot and case (None: load)
        self.idle: list[Slot] = []
        self.slots = [Slot() for _ in range(count)]
        self.last_death: BaseException | None = None
        for slot in self.slots:
            self.start(slot)

    def __enter__(self) -> CaseWorkers:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        for slot in self.slots:
            self.kill(slot)

    def start(self, slot: Slot) -> None:
        slot.actor = self.actor_class.remote(self.task, max(1, int(self.options.get("num_cpus", 1))))
        self.jobs[slot.actor.load.remote()] = (slot, None)

    def kill(self, slot: Slot) -> None:
        with contextlib.suppress(Exception):  # already dead, or the cluster is gone
            self.ray.kill(slot.actor, no_restart=True)

    def run(self, todo: list[Case], folder: Path, finished: Callable[[Case, CaseRecord], None]) -> None:
        """Run every case of `todo`, calling `finished` on the driver with each one's record as it ends."""
        originals = {case.id: case for case in todo}
        pending, deaths = deque(absolute_case(case) for case in todo), Counter()
        while pending or any(case is not None for _, case in self.jobs.values()):
            while self.idle and pending:
                slot, case = self.idle.pop(), pending.popleft()
                self.jobs[slot.actor.run.remote(case, str(folder))] = (slot, case)
            if not self.jobs:
                raise DeviceError(f"no Ray worker could start (each died {MAX_ATTEMPTS} times in a row): "
                                  f"{brief(self.last_death)}; --resume continues the cohort")
            ready, _ = self.ray.wait(list(self.jobs), num_returns=1, timeout=1.0)  # a timeout lets Ctrl-C in
            for ref in ready:
                slot, case = self.jobs.pop(ref)
                record = self.collect(ref, slot, case, pending, deaths)
                if record is not None:
                    finished(originals[record.case], record)

    def collect(self, ref: Any, slot: Slot, case: Case | None, pending: deque, deaths: Counter) -> CaseRecord | None:
        """The outcome of a finished call: a case's record (None when it goes back to the queue), or a loaded
        actor made free. A dead actor is replaced; the user's error from loading the model is raised."""
        try:
            result = self.ray.get(ref)
        except self.lost as error:
            if getattr(error, "actor_init_failed", False):  # the task cannot be rebuilt there: no use retrying
                raise DeviceError(f"the Ray workers cannot start (is this version of meddl installed on every "
                                  f"node?): {brief(error)}") from None
            self.replace(slot, error, starting=case is None)
            if case is None:
                return None
            deaths[case.id] += 1
            if deaths[case.id] < MAX_ATTEMPTS:
                pending.appendleft(case)
                return None
            return lost_record(case, deaths[case.id], error)
        except self.ray.exceptions.RayError as error:  # not the task's error (that is in the record): Ray's
            if case is None:
                raise
            self.idle.append(slot)
            return CaseRecord(case.id, FAILED, list(case.inputs), message=f"Ray error: {brief(error)}")
        self.idle.append(slot)
        if case is not None:
            return result
        if isinstance(result, MeddlError):
            raise result
        slot.failed_starts = 0
        return None

    def replace(self, slot: Slot, error: BaseException, starting: bool) -> None:
        """Kill what is left of a dead actor and start another in its place, unless actors there keep dying
        while starting (then the slot is given up)."""
        self.last_death = error
        self.kill(slot)
        slot.failed_starts = slot.failed_starts + 1 if starting else 0
        if slot.failed_starts < MAX_ATTEMPTS:
            self.start(slot)


def lost_worker_errors(ray: Any) -> tuple[type[BaseException], ...]:
    """Ray's errors for a call whose worker process or node died (killed, out of memory, crashed)."""
    names = ("RayActorError", "WorkerCrashedError", "NodeDiedError", "OutOfMemoryError", "LocalRayletDiedError")
    return tuple(getattr(ray.exceptions, name) for name in names if hasattr(ray.exceptions, name))


def lost_record(case: Case, deaths: int, error: BaseException) -> CaseRecord:
    return CaseRecord(case.id, FAILED, list(case.inputs),
                      message=f"its Ray worker died {deaths} times while running it (killed, out of memory or "
                              f"crashed; it was given a fresh worker each time): {brief(error)}")


def absolute_case(case: Case) -> Case:
    """The case with absolute paths, as a worker (whose working folder differs) needs them."""
    return replace(case, inputs=tuple(str(Path(path).absolute()) for path in case.inputs),
                   dicom_files=tuple(str(Path(path).absolute()) for path in case.dicom_files))


def brief(error: BaseException | None) -> str:
    """An error's first line and, when it comes from a Python exception further down, that one's last line
    (Ray's messages go on with ids, tracebacks and hints)."""
    text = ANSI_COLOUR.sub("", str(error or "unknown error"))
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    cause = next((line for line in reversed(lines[1:]) if EXCEPTION_LINE.match(line)), None)
    return f"{lines[0]} ... {cause}" if cause else lines[0]
