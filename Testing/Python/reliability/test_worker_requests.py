"""The worker answers every line, however malformed, with one event and keeps serving; its stdout carries only
the protocol; a crashed job's error carries only that job's stderr (issue 16, defect 9 and part of 13)."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys

import pytest
from meddl.cli.models import ImportRequest
from meddl.cli.worker import serve
from meddl.protocol import JOB_MARKER
from meddl_testing import write_state_dict_model
from MedDLLib.jobs import EngineJob, JobState, shut_down_workers

MALFORMED = ['[1,2,3]', '"hello"', 'null', '42', '{"job": "a"}', '{"job": "b", "argv": "models list"}',
             '{"job": "c", "argv": ["models", 3]}', '{"job": "d", "argv": null}', '{"job": [1], "argv": ["models"]}',
             '{"job": {"x": 1}, "argv": ["models", "list"]}', '{"job": true, "argv": []}', '{"job": 1.5}',
             '{"job": "e", "argv": ["models", "info", "a\\u0000b"]}', '{"job": "f", "argv": ["\\ud800"]}',
             '{not json', '[' * 100000, 'NaN', '{"job": "g", "argv": ["worker"]}']


def _events(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


def test_malformed_requests_get_a_protocol_error_and_the_worker_goes_on():
    lines = MALFORMED + [json.dumps({"job": "last", "argv": ["models", "list", "--json"]})]
    out = io.StringIO()
    assert serve(io.StringIO("\n".join(lines) + "\n"), out) == 0
    events = _events(out.getvalue())
    assert events[0]["event"] == "ready"
    answers = [e for e in events[1:] if e["event"] in ("done", "error")]
    assert len(answers) == len(lines) == len(events) - 1
    assert all(e["event"] == "error" and e["exit_code"] == 2 for e in answers[:-1]), answers
    kinds = [e["kind"] for e in answers[:-1]]
    assert kinds[:12] == ["ProtocolError"] * 12 and kinds[-1] == "ArgumentError"
    assert answers[-1] == {"event": "done", "job": "last", "action": "list", "model_id": "", "folder": "",
                           "count": answers[-1]["count"], "freed_bytes": 0, "details": {}}


@pytest.mark.parametrize("argv", [["models", "list"], ["models", "info", "deepbet-brain-extraction"],
                                  ["models", "remove", "absent"], ["models", "--help"]])
def test_printing_commands_write_only_events_on_stdout(argv, capsys):
    out = io.StringIO()
    serve(io.StringIO(json.dumps({"job": "j", "argv": argv}) + "\n"), out)
    events = _events(out.getvalue())  # every line parses
    assert [e["event"] for e in events][-1] in ("done", "error") and len(events) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and (argv[1] != "list" or "deepbet-brain-extraction" in captured.err)


def test_the_worker_process_survives_bytes_that_are_not_text(tmp_path):
    requests = b"\xff\xfe\x80 not utf-8\n" + b"\r\n" + b"\x00\x01\n" + json.dumps(
        {"job": "ok", "argv": ["models", "list"]}).encode() + b"\n"
    process = subprocess.run([sys.executable, "-m", "meddl", "worker"], input=requests, capture_output=True,
                             env={**os.environ, "CUDA_VISIBLE_DEVICES": "-1"}, timeout=120)
    events = _events(process.stdout.decode())
    assert process.returncode == 0 and events[0]["event"] == "ready"
    assert [e["event"] for e in events[1:]] == ["error", "error", "done"] and events[-1]["job"] == "ok"
    assert b"Traceback" not in process.stderr and JOB_MARKER.encode() + b"ok" in process.stderr


def test_a_crashed_jobs_error_holds_only_its_own_stderr(tmp_path):
    """The first job fails with a message on stderr; the second crashes: its error must not repeat the first's."""
    try:
        first = EngineJob(ImportRequest(str(tmp_path / "first-job-input.pt")), device="cpu")
        assert first.wait(60) is JobState.FAILED and "first-job-input" in first.error
        second = EngineJob(ImportRequest(str(write_state_dict_model(tmp_path))), device="cpu")
        assert second.worker is first.worker  # the same worker, whose stderr holds the first job's message
        assert any("first-job-input" in line for line in first.worker.stderr_tail)
        os.kill(second.process.pid, signal.SIGKILL)
        assert second.wait(60) is JobState.FAILED and "exited with code" in second.error
        assert "first-job-input" not in second.error
        assert any("first-job-input" in line for line in first.worker.stderr_of(first.id))
    finally:
        shut_down_workers()
