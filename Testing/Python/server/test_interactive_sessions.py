"""Interactive sessions on a MedDL server over loopback: a random-weights nnInteractive model answers each
interaction as `meddl interact` does locally, runs only the new prompt, keeps two clients apart, and is forgotten
by its worker when the session is closed or idle past its timeout."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("nnInteractive.inference.inference_session")

from meddl.cli import main  # noqa: E402
from meddl.cli.interact import InteractRequest  # noqa: E402
from meddl.cli.worker import serve  # noqa: E402
from meddl.errors import MeddlError  # noqa: E402
from meddl.io import read_image  # noqa: E402
from meddl.server.client import ServerClient, SessionExpired, SessionRef  # noqa: E402
from meddl.server.interactive import RemoteInteractiveSession  # noqa: E402
from meddl.server.jobs import Job, JobService  # noqa: E402
from meddl.server.workdir import WorkDir  # noqa: E402


def _labels(result) -> np.ndarray:
    return read_image(result.labels).array


def _session(client: ServerClient, case: dict, name: str) -> RemoteInteractiveSession:
    return RemoteInteractiveSession(client, case["images"][name], str(case["model"]), device="cpu")


def test_sessions_answer_as_locally_run_only_the_new_prompt_and_stay_apart(case, start_server, alice, bob, tmp_path,
                                                                           wait_for):
    server = start_server(workers=1, max_upload_mb=32.0)  # one worker keeps both sessions
    jobs = server.state.jobs
    ours = _session(ServerClient(server.url, alice), case, "alice")
    theirs = _session(ServerClient(server.url, bob), case, "bob")
    assert len(list(server.state.work.sessions.iterdir())) == 2
    timings = []
    for step in range(3):
        for name, session in (("alice", ours), ("bob", theirs)):
            prompts, expected = case["steps"][name][step]
            started = time.perf_counter()
            result = session.interact(prompts, tmp_path / f"{name}-{step}.nii.gz")
            timings.append(time.perf_counter() - started)
            np.testing.assert_array_equal(_labels(result), expected)
            assert result.replayed is False and len(result.seconds) == 1, (name, step, result)
    assert 0 < case["steps"]["alice"][2][1].sum() < case["steps"]["alice"][2][1].size  # a real comparison
    print(f"remote interactions: {', '.join(f'{t:.2f}' for t in timings)} s")

    stranger = ServerClient(server.url, bob)
    with pytest.raises(SessionExpired):  # another key's session does not exist for it
        stranger.run(_request(case, tmp_path), session=SessionRef(ours.id, {}, {}))
    assert stranger._call("GET", f"/v1/sessions/{ours.id}", expect=(404,))
    assert jobs.sessions_released() == 0
    ours.close()
    wait_for(lambda: jobs.sessions_released() == 1)
    assert ServerClient(server.url, alice)._call("GET", f"/v1/sessions/{ours.id}", expect=(404,))
    assert len(list(server.state.work.sessions.iterdir())) == 1
    prompts, expected = case["steps"]["bob"][2]
    result = theirs.interact(prompts)  # the other session is still kept
    np.testing.assert_array_equal(_labels(result), expected)
    assert result.seconds == [] and result.replayed is False  # the same history: nothing to run
    theirs.close()
    wait_for(lambda: jobs.sessions_released() == 2)
    assert not list(server.state.work.sessions.iterdir()) and not list(server.state.work.jobs.iterdir())


def _request(case: dict, tmp_path: Path) -> InteractRequest:
    prompts = tmp_path / "stray.json"
    prompts.write_text(json.dumps(case["steps"]["alice"][0][0]))
    return InteractRequest(str(case["images"]["alice"]), str(case["model"]), str(prompts),
                           str(tmp_path / "stray.nii.gz"), device="cpu")


def test_an_idle_session_is_freed_and_opened_again_when_used(case, start_server, alice, wait_for):
    server = start_server(workers=1, max_upload_mb=32.0, session_idle_s=1.0)
    session = _session(ServerClient(server.url, alice), case, "alice")
    first = session.id
    prompts, expected = case["steps"]["alice"][0]
    np.testing.assert_array_equal(_labels(session.interact(prompts)), expected)
    wait_for(lambda: server.state.jobs.sessions_released() == 1, timeout=20)
    assert server.state.sessions.count() == 0 and not list(server.state.work.sessions.iterdir())
    prompts, expected = case["steps"]["alice"][1]
    result = session.interact(prompts)  # the server forgot it: opened again, the history run from the start
    np.testing.assert_array_equal(_labels(result), expected)
    assert session.id != first and len(result.seconds) == 2
    session.close()
    assert server.state.sessions.count() == 0


def test_the_command_line_runs_an_interaction_on_a_server(case, start_server, alice, tmp_path, monkeypatch,
                                                         wait_for):
    server = start_server(workers=1, max_upload_mb=32.0)
    monkeypatch.setenv("MEDDL_API_KEY", alice)
    prompts, expected = case["steps"]["bob"][1]
    prompts_file = tmp_path / "prompts.json"
    prompts_file.write_text(json.dumps(prompts))
    output = tmp_path / "remote.nii.gz"
    assert main(["interact", str(case["images"]["bob"]), str(case["model"]), str(prompts_file), str(output),
                 "--device", "cpu", "--server", server.url, "--progress", "none"]) == 0
    np.testing.assert_array_equal(read_image(output).array, expected)
    wait_for(lambda: server.state.jobs.sessions_released() == 1)  # a one-off session is forgotten after its job


def _job(work: WorkDir, name: str, slot: int | None = None) -> Job:
    folder = work.jobs / name
    folder.mkdir()
    return Job(name, "owner", "InteractRequest", [], folder, [], slot=slot)


def test_a_session_slot_runs_its_sessions_first_and_leaves_other_jobs_to_free_slots(tmp_path):
    work = WorkDir(tmp_path / "work")
    try:
        service = JobService(work, workers=2)  # its workers are not started: only the choice of jobs is tested
        first, second = service._slots
        assert service.assign_slot() == 0
        plain, pinned = _job(work, "plain"), _job(work, "pinned", slot=0)
        service.submit(plain)
        service.submit(pinned)
        assert service._pick(first) is pinned and service._pick(second) is plain
        service._queue.remove(pinned)
        assert service._pick(first) is None  # slot 0 keeps a session: slot 1 takes the other jobs
        assert service.assign_slot() == 1  # now both keep one: any slot takes any job
        assert service._pick(first) is plain
        service.free_session(0, ["/image.nii.gz"])
        assert service._next_work(first) == ["/image.nii.gz"]  # its worker forgets the session first
    finally:
        work.close()


def test_a_worker_answers_release_messages():
    out = io.StringIO()
    serve(io.StringIO('{"job": "a", "release": ["/no/such/image.nii.gz"]}\n{"job": "b", "release": "x"}\n'), out)
    events = [json.loads(line) for line in out.getvalue().splitlines()][1:]  # after "ready"
    assert events[0] == {"event": "done", "job": "a", "released": 0}
    assert events[1]["event"] == "error" and events[1]["kind"] == "ProtocolError" and events[1]["job"] == "b"


def test_a_key_opens_at_most_its_limit_of_sessions(case, start_server, alice, bob):
    from meddl.server.sessions import MAX_SESSIONS_PER_KEY

    server = start_server(workers=1, max_upload_mb=32.0)
    ours = [_session(ServerClient(server.url, alice), case, "alice") for _ in range(MAX_SESSIONS_PER_KEY)]
    with pytest.raises(MeddlError, match=f"this key has {MAX_SESSIONS_PER_KEY} open sessions"):
        _session(ServerClient(server.url, alice), case, "alice")
    _session(ServerClient(server.url, bob), case, "bob").close()  # another key's limit is its own
    ours.pop().close()
    ours.append(_session(ServerClient(server.url, alice), case, "alice"))  # a closed one makes room
    for session in ours:
        session.close()
    assert server.state.sessions.count() == 0
