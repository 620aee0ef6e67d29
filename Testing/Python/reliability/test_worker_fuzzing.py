"""Random requests to the worker: every stdout line is a JSON event, every request gets exactly one done or
error event, and the worker still answers a valid request afterwards (issue 16, defect 9)."""

from __future__ import annotations

import io
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from meddl.cli.worker import serve
from meddl.models import loading

COMMANDS = ["segment", "classify", "enhance", "register", "train", "models", "worker", "list", "info", "remove",
            "import", "--help", "-h", "--device", "cpu", "--model", "--json", "--id", "", "-", "--"]
json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                                        max_size=4), max_leaves=12)
argvs = st.lists(st.sampled_from(COMMANDS) | st.text(max_size=12), max_size=6)
requests = st.one_of(
    json_values.map(json.dumps),  # any JSON value
    st.builds(lambda job, argv: json.dumps({"job": job, "argv": argv}), json_values, argvs),  # odd jobs, real argv
    st.builds(lambda argv: json.dumps({"job": "j", "argv": argv}), json_values),  # odd argv
    st.text(max_size=30).filter(lambda line: "\n" not in line),  # not JSON at all
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(st.lists(requests, min_size=1, max_size=5))
def test_random_requests_each_get_one_answer_and_the_worker_lives(lines):
    final = json.dumps({"job": "final-check", "argv": ["models", "list", "--json"]})
    out = io.StringIO()
    try:
        serve(io.StringIO("\n".join([*lines, final]) + "\n"), out)
    finally:
        loading.set_model_cache_size(0)
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    assert all(isinstance(event, dict) and "event" in event for event in events)
    assert events[0]["event"] == "ready"
    answers = [event for event in events if event["event"] in ("done", "error")]
    assert len(answers) == len([line for line in lines if line.strip()]) + 1
    assert all(answer["event"] == "done" or isinstance(answer.get("exit_code"), int) for answer in answers)
    assert answers[-1]["event"] == "done" and answers[-1]["job"] == "final-check"
    assert not [answer for answer in answers if answer.get("kind") == "InternalError"], answers
