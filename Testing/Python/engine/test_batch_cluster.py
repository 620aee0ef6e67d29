"""Cohorts on a Ray cluster (meddl.batch.cluster): a local two-CPU cluster on this machine, shared by the module's
tests, with a small task that can be told to be slow, to fail a case, or to kill its own worker process."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from meddl.batch import Case, find_cases, run_batch
from meddl.batch.summary import DONE, FAILED, SUMMARY_JSON
from meddl.errors import DeviceError, InputError, ModelError
from meddl.io import read_image, write_image
from meddl.outputs import OutputSet
from meddl_testing import blob_image, write_state_dict_model

ray = pytest.importorskip("ray")
from meddl.batch.cluster import ray_connection, run_batch_on_ray, worker_plan  # noqa: E402

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray's workers cannot import this test module

CASES = ("c1", "c2", "c3", "c4", "c5")


@dataclass
class ProbeCases:
    """A test task: each case's text upper-cased into <case>.txt (written whole), every call counted as a file
    in `calls`; it can sleep, fail a case with an InputError, kill its own worker process (os._exit) on a case
    once or every time, fail to load, print to stdout, or refuse to be rebuilt in another process."""

    calls: str
    sleep: float = 0.0
    sleeps: dict[str, float] = field(default_factory=dict)
    fail: tuple[str, ...] = ()
    kill_once: tuple[str, ...] = ()
    kill_always: tuple[str, ...] = ()
    fail_load: bool = False
    shout: bool = False
    break_remote: bool = False
    command: str = "probe"
    _loaded: Any = field(default=None, init=False, repr=False)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_loaded": None, "driver": os.getpid()}

    def __setstate__(self, state: dict) -> None:
        driver = state.pop("driver", os.getpid())
        if state["break_remote"] and driver != os.getpid():
            raise RuntimeError("this task cannot be rebuilt here")
        self.__dict__.update(state)

    def check(self, cases: list[Case]) -> None:
        pass

    def load(self, progress) -> None:
        if self.fail_load:
            raise ModelError("no such model: probe")
        if self.shout:
            print("noise from a worker's print", flush=True)
            os.system("echo noise from a worker\\'s file descriptor 1")
        self._loaded = os.getpid()

    def read(self, case: Case) -> str:
        return Path(case.inputs[0]).read_text()

    def run(self, case: Case, data: str, folder: Path, progress) -> tuple[list[Path], dict[str, Any]]:
        assert self._loaded == os.getpid(), "run before load in this process"
        calls = Path(self.calls)
        (calls / f"{case.id}.{os.getpid()}.{uuid.uuid4().hex}").touch()
        if case.id in self.kill_always or (case.id in self.kill_once and first_time(calls / f"killed-{case.id}")):
            os._exit(1)
        time.sleep(self.sleeps.get(case.id, self.sleep))
        if case.id in self.fail and not (calls / f"repaired-{case.id}").exists():  # the user repairs the input
            raise InputError(f"{case.id}: unreadable on purpose")
        with OutputSet(inputs=case.inputs) as outputs:
            target = outputs.add(folder / f"{case.id}.txt")
            outputs.staged(target).write_text(data.upper())
            outputs.commit()
        return [target], {"pid": os.getpid()}

    def finish(self, records, folder: Path) -> Path:
        (folder / "finished.txt").write_text(",".join(record.case for record in records))
        return folder / "finished.txt"


def first_time(marker: Path) -> bool:
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def calls_of(calls: Path, case: str) -> int:
    return len(list(calls.glob(f"{case}.*")))


@pytest.fixture(scope="module")
def module_ray():
    """The module's Ray cluster is shut down when its tests end (it is started on first use)."""
    yield
    if ray.is_initialized():
        ray.shutdown()


@pytest.fixture
def cluster(module_ray):
    """A local Ray cluster of two CPUs on the loopback interface, shared by the module's tests."""
    if not ray.is_initialized():
        ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.WARNING, _node_ip_address="127.0.0.1")
    yield
    deadline = time.monotonic() + 20  # the next test starts with both CPUs free (killed actors let go of theirs)
    while ray.available_resources().get("CPU", 0) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)


@pytest.fixture
def cohort(tmp_path) -> tuple[list[Case], Path, Path]:
    """Five cases (text files), an empty folder counting the task's calls, and the output folder's path."""
    inputs, calls = tmp_path / "in", tmp_path / "calls"
    inputs.mkdir()
    calls.mkdir()
    cases = []
    for name in CASES:
        (inputs / f"{name}.txt").write_text(f"case {name}")
        cases.append(Case(name, (str(inputs / f"{name}.txt"),)))
    return cases, calls, tmp_path / "out"


def summary_of(folder: Path) -> dict:
    return json.loads((folder / SUMMARY_JSON).read_text())


def assert_all_done_once(folder: Path, cases: list[Case]) -> dict:
    summary = summary_of(folder)
    assert [record["case"] for record in summary["records"]] == [case.id for case in cases]
    assert [record["status"] for record in summary["records"]] == [DONE] * len(cases)
    assert summary["done"] == len(cases) and summary["failed"] == 0
    for case in cases:
        assert (folder / f"{case.id}.txt").read_text() == f"CASE {case.id.upper()}"
    assert (folder / "finished.txt").read_text() == ",".join(case.id for case in cases)
    return summary


def test_missing_ray_is_explained(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails as if it was not installed
    with pytest.raises(DeviceError, match=r'pip install "meddl\[cluster\]"'):
        run_batch_on_ray(ProbeCases(str(tmp_path)), [Case("a", (str(tmp_path / "a.txt"),))], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_an_address_nothing_answers_at_is_refused():
    stub = SimpleNamespace(is_initialized=lambda: False, init=lambda **options: pytest.fail("ray.init was called"))
    with pytest.raises(DeviceError, match="cannot reach the Ray cluster at 127.0.0.1:1"), \
            ray_connection(stub, "127.0.0.1:1"):
        pass
    with pytest.raises(DeviceError, match="give 'auto', host:port"), ray_connection(stub, "headnode"):
        pass


def test_a_cluster_that_does_not_answer_leaves_no_output_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # not the module's cluster, if it is running
    out = tmp_path / "out"
    case = Case("a", (str(tmp_path / "a.txt"),))
    with pytest.raises(DeviceError, match="cannot reach the Ray cluster at 127.0.0.1:1"):
        run_batch_on_ray(ProbeCases(str(tmp_path)), [case], out, address="127.0.0.1:1")
    assert not out.exists(), "a run that could not start is not an earlier run that --resume must name"


def test_workers_default_to_one_per_gpu_else_per_cpu_share(capsys):
    from meddl.batch.tasks import SegmentCases

    node = {"Alive": True, "Resources": {"CPU": 16.0, "GPU": 2.0}}
    stub = SimpleNamespace(cluster_resources=lambda: {"CPU": 16.0, "GPU": 2.0}, nodes=lambda: [node])
    assert worker_plan(stub, SegmentCases(), None, 1.0, 100) == (2, {"num_cpus": 1.0, "num_gpus": 1.0})
    assert worker_plan(stub, SegmentCases(), 3, 2.0, 100) == (3, {"num_cpus": 2.0, "num_gpus": 0.5})
    assert worker_plan(stub, SegmentCases(device="cpu"), None, 4.0, 100) == (4, {"num_cpus": 4.0})
    assert worker_plan(stub, SegmentCases(device="cpu"), None, 1.0, 5) == (5, {"num_cpus": 1.0})  # no idle ones
    assert capsys.readouterr().err == ""
    assert worker_plan(stub, SegmentCases(device="cpu"), None, 32.0, 5) == (1, {"num_cpus": 32.0})
    assert "no node of the Ray cluster has 32 CPUs" in capsys.readouterr().err


def test_own_cluster_is_started_quietly_and_stopped(cohort, capfd, monkeypatch):
    """address="auto" with no cluster running starts one on this machine and stops it at the end; stdout (the
    JSON-lines protocol) gets nothing from Ray or its workers, even when a worker prints and when one dies (Ray
    prints "(raylet) A worker died ..." on the driver's sys.stdout)."""
    from meddl.progress import JsonLinesProgress

    if ray.is_initialized():
        ray.shutdown()
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray._private.ray_constants, "ENABLE_RAY_CLUSTER", False)  # a cluster on loopback only
    cases, calls, out = cohort
    task = ProbeCases(str(calls), shout=True, sleep=1.5, kill_once=("c1",))
    outcome = run_batch_on_ray(task, cases[:2], out, progress=JsonLinesProgress())
    assert not ray.is_initialized()
    assert outcome.count(DONE) == 2 and calls_of(calls, "c1") == 2
    events = [json.loads(line) for line in capfd.readouterr().out.splitlines()]  # every line is JSON
    assert sorted(event["metrics"]["case"] for event in events if "metrics" in event) == ["c1", "c2"]
    assert events[-1]["fraction"] == 1.0


def test_every_case_is_done_exactly_once(cluster, cohort):
    cases, calls, out = cohort
    outcome = run_batch_on_ray(ProbeCases(str(calls), sleep=0.6), cases, out)  # two workers: the two CPUs
    summary = assert_all_done_once(out, cases)
    assert [record.case for record in outcome.records] == list(CASES)
    assert outcome.table == out / "finished.txt"
    assert all(calls_of(calls, case) == 1 for case in CASES)
    assert len({record["details"]["pid"] for record in summary["records"]}) == 2  # both workers took cases
    assert summary["records"][0]["inputs"] == list(cases[0].inputs)


def test_a_killed_worker_s_case_is_retried_on_another(cluster, cohort):
    cases, calls, out = cohort
    outcome = run_batch_on_ray(ProbeCases(str(calls), sleep=0.2, kill_once=("c2",)), cases, out, workers=2)
    assert_all_done_once(out, cases)
    assert (calls / "killed-c2").exists()
    assert calls_of(calls, "c2") == 2 and all(calls_of(calls, case) == 1 for case in CASES if case != "c2")
    assert outcome.count(DONE) == 5


def test_a_case_that_always_kills_its_worker_fails_after_three_tries(cluster, cohort):
    cases, calls, out = cohort
    outcome = run_batch_on_ray(ProbeCases(str(calls), kill_always=("c3",)), cases, out, workers=2)
    records = {record["case"]: record for record in summary_of(out)["records"]}
    assert list(records) == list(CASES)
    assert records["c3"]["status"] == FAILED and "died 3 times" in records["c3"]["message"]
    assert all(records[case]["status"] == DONE for case in CASES if case != "c3")
    assert calls_of(calls, "c3") == 3 and outcome.count(FAILED) == 1


def test_a_failed_case_is_recorded_and_resume_runs_only_it(cluster, cohort):
    cases, calls, out = cohort
    outcome = run_batch_on_ray(ProbeCases(str(calls), fail=("c4",)), cases, out)
    records = {record.case: record for record in outcome.records}
    assert records["c4"].status == FAILED and records["c4"].message == "c4: unreadable on purpose"
    assert summary_of(out)["failed"] == 1 and outcome.count(DONE) == 4
    with pytest.raises(Exception, match="not empty"):  # without resume, an earlier run is never overwritten
        run_batch_on_ray(ProbeCases(str(calls), fail=("c4",)), cases, out)
    (calls / "repaired-c4").touch()
    run_batch_on_ray(ProbeCases(str(calls), fail=("c4",)), cases, out, resume=True)
    assert_all_done_once(out, cases)
    assert calls_of(calls, "c4") == 2 and all(calls_of(calls, case) == 1 for case in CASES if case != "c4")
    run_batch_on_ray(ProbeCases(str(calls), fail=("c4",)), cases, out, resume=True, address="no-such-host:1")
    assert calls_of(calls, "c4") == 2


class InterruptAfterFirstCase:
    """A progress callback standing in for Ctrl-C: KeyboardInterrupt as the first case ends."""

    def __call__(self, fraction: float, message: str) -> None:
        pass

    def with_metrics(self, fraction: float, message: str, metrics: dict) -> None:
        raise KeyboardInterrupt


def test_interrupt_keeps_finished_cases_and_stops_the_workers(cluster, cohort):
    cases, calls, out = cohort
    task = ProbeCases(str(calls), sleep=3.0, sleeps={"c1": 0.0})
    with pytest.raises(KeyboardInterrupt):
        run_batch_on_ray(task, cases, out, progress=InterruptAfterFirstCase(), workers=2)
    summary = summary_of(out)
    assert [(record["case"], record["status"]) for record in summary["records"]] == [("c1", DONE)]
    deadline = time.monotonic() + 10
    while ray.available_resources().get("CPU", 0) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert ray.available_resources().get("CPU", 0) == 2  # both actors were killed (c2 was still sleeping)
    assert not (out / "c2.txt").exists()
    run_batch_on_ray(task, cases, out, resume=True)  # the same settings (a resumed run must keep them)
    assert_all_done_once(out, cases)
    assert calls_of(calls, "c1") == 1


def test_a_model_that_cannot_load_stops_the_run(cluster, cohort):
    cases, calls, out = cohort
    with pytest.raises(ModelError, match="no such model: probe"):
        run_batch_on_ray(ProbeCases(str(calls), fail_load=True), cases, out)
    assert summary_of(out)["records"] == [] and not list(calls.iterdir())


def test_workers_that_cannot_start_stop_the_run(cluster, cohort):
    cases, calls, out = cohort
    with pytest.raises(DeviceError, match="workers cannot start.*RuntimeError: this task cannot be rebuilt here"):
        run_batch_on_ray(ProbeCases(str(calls), break_remote=True), cases, out)
    assert not list(calls.iterdir())


def test_segmentation_on_ray_matches_the_local_run(cluster, tmp_path, capsys):
    """`meddl segment --batch ... --ray auto` (on the module's cluster) writes the label maps, sidecars and
    volumes the local runner writes, and only JSON lines on stdout."""
    from meddl.batch.tasks import SegmentCases
    from meddl.cli import main

    (tmp_path / "model").mkdir()
    model = write_state_dict_model(tmp_path / "model", labels=2)
    (tmp_path / "in").mkdir()
    for shift in range(3):
        blob = blob_image(shape=(24, 24, 24))
        write_image(blob.with_array(np.roll(blob.array, 3 * shift, axis=shift)), tmp_path / "in" / f"p{shift}.nii.gz")
    local = run_batch(SegmentCases(model=str(model), device="cpu"), find_cases(tmp_path / "in"), tmp_path / "local")
    assert main(["segment", "--batch", str(tmp_path / "in"), "--out", str(tmp_path / "ray"), "--model", str(model),
                 "--device", "cpu", "--ray", "auto", "--ray-workers", "2", "--progress", "json"]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert events[-1]["event"] == "done" and events[-1]["done"] == 3
    remote = {record["case"]: record for record in summary_of(tmp_path / "ray")["records"]}
    assert list(remote) == [record.case for record in local.records] == ["p0", "p1", "p2"]
    for mine in local.records:
        theirs = remote[mine.case]
        assert theirs["status"] == DONE and theirs["details"] == mine.details and mine.details  # label volumes
        labels = read_image(tmp_path / "ray" / f"{mine.case}.nii.gz")
        assert np.array_equal(labels.array, read_image(tmp_path / "local" / f"{mine.case}.nii.gz").array)
        assert labels.array.max() > 0
        sidecars = [Path(path) for path in (*mine.outputs, *theirs["outputs"]) if path.endswith(".json")]
        assert sidecars[0].read_text() == sidecars[1].read_text()
