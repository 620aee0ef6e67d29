"""The Segment Editor effect's promptable segmentation with the Compute setting on a MedDL server: the volume and
model go up once into a session the server keeps, each interaction runs only the new prompt there (or one undo)
and gives what `meddl interact` gives locally, and closing the effect's session frees it on the server."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("nnInteractive.inference.inference_session")

from headless_slicer import HeadlessScene  # noqa: E402
from meddl.interactive.session import Prompt  # noqa: E402
from meddl.io import read_image  # noqa: E402
from MedDLLib import compute  # noqa: E402
from MedDLLib.interactive_segmentation import PromptSegmentation  # noqa: E402
from MedDLLib.jobs import JobState  # noqa: E402
from MedDLLib.segmentations import apply_label_map  # noqa: E402
from MedDLLib.volumes import volume_node_from_image  # noqa: E402

TIMEOUT = 240


def _prompt_session(scene, case: dict) -> PromptSegmentation:
    image = read_image(case["images"]["alice"])
    volume = volume_node_from_image(scene, image, "source")
    labels = np.zeros(image.shape, np.uint8)
    labels[2:4, 2:4, 2:4] = 1
    node = apply_label_map(scene, image.with_array(labels), [{"value": 1, "name": "target", "color": (1, 0, 0)}],
                           volume, None, "segmentation")
    segment_id = node.GetSegmentation().GetSegmentIdBySegmentName("target")
    return PromptSegmentation(node, segment_id, volume, str(case["model"]), device="cpu")


def _finished(job):
    assert job.wait(TIMEOUT) is JobState.SUCCEEDED, job.engine.error
    return job.finish()


def test_the_effect_keeps_one_session_on_the_server_and_frees_it_when_closed(case, start_server, alice, wait_for):
    server = start_server(workers=1, max_upload_mb=32.0)
    headless = HeadlessScene()
    compute.use_server(server.url, alice)
    try:
        prompts = _prompt_session(headless.scene, case)
        steps = case["steps"]["alice"]
        for history, expected in steps:
            preview = _finished(prompts.add(Prompt.from_dict(history[-1])))
            np.testing.assert_array_equal(preview.labels.array, expected)
            assert prompts.last_result.replayed is False and len(prompts.last_result.seconds) == 1
            assert server.state.sessions.count() == 1  # the volume and model went up once
        preview = _finished(prompts.undo_prompt())
        np.testing.assert_array_equal(preview.labels.array, steps[1][1])
        assert prompts.last_result.seconds == []  # the server's worker undid the last prompt, ran none
        assert 0 < preview.labels.array.sum() < preview.labels.array.size  # a real comparison
        prompts.close()
        wait_for(lambda: server.state.jobs.sessions_released() == 1)
        assert server.state.sessions.count() == 0 and not list(server.state.work.sessions.iterdir())
    finally:
        compute.use_this_computer()


def test_a_session_the_server_lost_is_opened_again_and_answers_alike(case, start_server, alice, wait_for):
    server = start_server(workers=1, max_upload_mb=32.0, session_idle_s=1.0)
    headless = HeadlessScene()
    compute.use_server(server.url, alice)
    try:
        prompts = _prompt_session(headless.scene, case)
        (first, _), (history, expected) = case["steps"]["alice"][:2]
        _finished(prompts.add(Prompt.from_dict(first[-1])))
        wait_for(lambda: server.state.jobs.sessions_released() == 1, timeout=20)  # idle past its timeout
        preview = _finished(prompts.add(Prompt.from_dict(history[-1])))
        np.testing.assert_array_equal(preview.labels.array, expected)
        assert len(prompts.last_result.seconds) == 2  # opened again: the history ran from the start
        compute.use_this_computer()  # the setting changed: the server's session goes, the next job runs here
        local = _finished(prompts.undo_prompt())
        np.testing.assert_array_equal(local.labels.array, case["steps"]["alice"][0][1])
        wait_for(lambda: server.state.sessions.count() == 0)
        prompts.close()
    finally:
        compute.use_this_computer()
