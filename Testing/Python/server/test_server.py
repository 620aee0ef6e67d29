"""The MedDL server's HTTP API on loopback: authentication, uploads, job checks, isolation, cancel, expiry, restart."""

from __future__ import annotations

import io
import os
import re
import socket
import stat
import subprocess
import sys
import threading
import time
import zipfile

import httpx
import pytest
from meddl import __version__
from meddl.cli import main
from meddl.errors import InputError
from meddl.server import app as app_module
from meddl.server import keys
from meddl.server import uploads as uploads_module
from meddl.server.transport import is_loopback as _loopback
from meddl.server.uploads import MAX_HEADER_BYTES, check_image_header, extract_zip
from meddl.server.workdir import MARKER, WorkDir, WorkDirError

ENDPOINTS = [("GET", "/v1/health"), ("GET", "/v1/models"), ("PUT", "/v1/uploads"), ("POST", "/v1/jobs"),
             ("GET", "/v1/jobs/x"), ("GET", "/v1/jobs/x/events"), ("DELETE", "/v1/jobs/x"),
             ("GET", "/v1/jobs/x/result"), ("GET", "/v1/jobs/x/files/output/a.nii.gz"),
             ("POST", "/v1/jobs/x/release"), ("DELETE", "/v1/uploads/x"), ("GET", "/not/an/endpoint")]


def http(server, key: str) -> httpx.Client:
    return httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=60)


def upload(client: httpx.Client, content: bytes, suffix: str = ".nii.gz") -> str:
    answer = client.put("/v1/uploads", content=content, headers={"X-MedDL-Suffix": suffix})
    assert answer.status_code == 201, answer.text
    return answer.json()["upload"]


def segment_job(input_ref: str, output: str = "labels.nii.gz", **fields) -> dict:
    return {"command": "segment", "request": "SegmentRequest",
            "fields": {"input": input_ref, "output": output, "model": "bands", **fields}}


def slow_job(input_ref: str) -> dict:
    return {"command": "enhance", "request": "EnhanceRequest",
            "fields": {"input": input_ref, "output": "denoised.nii.gz", "task": "denoise", "method": "network",
                       "steps": 100000}}


def wait_state(client: httpx.Client, job: str, states: tuple[str, ...], wait_for) -> dict:
    return wait_for(lambda: (lambda s: s if s["state"] in states else None)(client.get(f"/v1/jobs/{job}").json()),
                    timeout=60)


def owner(key: str) -> str:
    return keys.hash_key(key).hex()


def test_every_endpoint_needs_a_key_of_the_file(server, alice, keys_file):
    wrong = [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Bearer {alice}x"},
             {"Authorization": f"Basic {alice}"}, {"Authorization": alice}, {"Authorization": "Bearer"}]
    with httpx.Client(base_url=server.url) as anonymous:
        answers = [(method, path, headers, anonymous.request(method, path, headers=headers))
                   for method, path in ENDPOINTS for headers in wrong]
    for method, path, headers, answer in answers:
        assert answer.status_code == 401, (method, path, headers)
        assert answer.json() == {"detail": "not authenticated"}
        assert answer.headers["www-authenticate"] == "Bearer"
    path, issued = keys_file
    text = path.read_text()
    assert all(key not in text for key in issued.values())
    assert all(re.fullmatch(r"[a-z]+:[0-9a-f]{64}", line) for line in text.splitlines())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with http(server, alice) as client:
        assert client.get("/v1/health").json()["meddl"] == __version__


def test_a_key_file_is_read_again_when_it_changes(tmp_path):
    path = tmp_path / "keys.txt"
    first = keys.add_key("one", path)
    ring = keys.KeyRing(path)
    assert ring.match(first).name == "one" and ring.match("nope") is None and ring.match("") is None
    second = keys.add_key("two", path)
    assert ring.match(second).name == "two"
    path.write_text("\n".join(line for line in path.read_text().splitlines() if not line.startswith("one:")) + "\n")
    assert ring.match(first) is None and ring.match(second).name == "two"  # revoked without a restart
    with pytest.raises(keys.KeyFileError, match="already has a key"):
        keys.add_key("two", path)
    (tmp_path / "plain.txt").write_text(f"me:{first}\n")  # a key itself instead of its hash
    with pytest.raises(keys.KeyFileError, match="NAME:SHA256HEX"):
        keys.KeyRing(tmp_path / "plain.txt")
    (tmp_path / "empty.txt").write_text("# nobody yet\n")
    with pytest.raises(keys.KeyFileError, match="holds no key"):
        keys.KeyRing(tmp_path / "empty.txt")


def test_health_and_the_model_library(server, alice):
    with http(server, alice) as client:
        health = client.get("/v1/health").json()
        assert health["meddl"] == __version__ and health["max_upload_bytes"] == 1 << 20
        models = {row["id"]: row for row in client.get("/v1/models").json()["models"]}
    assert models["bands"]["installed"] and models["bands"]["task"] == "segmentation"


def test_an_upload_over_the_limit_is_refused_and_removed(server, alice, wait_for):
    before = set(server.state.work.uploads.iterdir())
    too_big = b"\0" * ((1 << 20) + 1)
    with http(server, alice) as client:
        declared = client.put("/v1/uploads", content=too_big, headers={"X-MedDL-Suffix": ".nii.gz"})
        assert declared.status_code == 413 and "1 MB" in declared.json()["detail"]
    with http(server, alice) as client:  # no Content-Length: refused once the stream passes the limit
        streamed = client.put("/v1/uploads", content=iter([too_big[: 1 << 19]] * 3),
                              headers={"X-MedDL-Suffix": ".nii.gz"})
        assert streamed.status_code == 413
    wait_for(lambda: set(server.state.work.uploads.iterdir()) == before)


def test_a_client_that_disconnects_mid_upload_leaves_nothing(server, alice, wait_for):
    uploads = server.state.work.uploads
    before = set(uploads.iterdir())
    pending = server.state.uploads.pending(owner(alice))
    with socket.create_connection(("127.0.0.1", server.port)) as connection:
        connection.sendall(f"PUT /v1/uploads HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {alice}\r\n"
                           "X-MedDL-Suffix: .nii.gz\r\nContent-Length: 900000\r\n\r\n".encode() + b"\1" * 300000)
        wait_for(lambda: any(path.name.startswith(".partial-") for path in uploads.iterdir()))
    wait_for(lambda: set(uploads.iterdir()) == before)
    assert server.state.uploads.pending(owner(alice)) == pending


@pytest.mark.parametrize(("suffix", "content"), [
    (".exe", b"MZ"), ("", b"x"), ("../x.nii.gz", b"x"),
    (".nrrd", b"NRRD0004\ntype: uchar\ndimension: 1\nsizes: 4\nencoding: raw\ndata file: /etc/passwd\n\n"),
    (".nhdr", b"NRRD0004\ntype: uchar\ndimension: 1\nsizes: 4\nencoding: raw\ndatafile: ../keys.txt\n\n"),
    (".mha", b"ObjectType = Image\nNDims = 1\nDimSize = 4\nElementType = MET_UCHAR\nElementDataFile = /etc/passwd\n"),
    # what the readers also take: teem ends NRRD lines at CR, MetaIO takes ':' for '=' and stops at its own spelling
    (".nrrd", b"NRRD0004\rtype: uchar\rdimension: 1\rsizes: 4\rencoding: raw\rdata file: /etc/passwd\r\r"),
    (".nrrd", b"NRRD0004\ntype: uchar\ndimension: 1\nsizes: 4\nencoding: raw\ndata file: /etc/passwd:=x\n\n"),
    (".mha", b"ObjectType = Image\nNDims = 1\nDimSize = 4\nElementType = MET_UCHAR\nElementDataFile: /etc/passwd\n"),
    (".mha", b"ObjectType = Image\nNDims = 1\nDimSize = 4\nElementType = MET_UCHAR\nelementdatafile = LOCAL\n"
             b"ElementDataFile = /etc/passwd\n"),
    (".mha", b"ObjectType = Image\nNDims = 1\nElementType = MET_UCHAR\nComment = x\rElementDataFile = LOCAL\n"
             b"ElementDataFile = /etc/passwd\n"),
])
def test_uploads_of_other_types_or_that_point_at_server_files_are_refused(server, alice, suffix, content):
    before = set(server.state.work.uploads.iterdir())
    with http(server, alice) as client:
        answer = client.put("/v1/uploads", content=content, headers={"X-MedDL-Suffix": suffix})
    assert answer.status_code == 400 and answer.json()["kind"] == "InputError"
    assert set(server.state.work.uploads.iterdir()) == before


def test_a_header_that_does_not_end_within_what_is_checked_is_refused(tmp_path):
    """A data file named after a megabyte of comments would be read by the reader, unseen by the check."""
    padding = b"# padding\n" * ((MAX_HEADER_BYTES // 10) + 1)
    nrrd, mha = tmp_path / "x.nrrd", tmp_path / "x.mha"
    nrrd.write_bytes(b"NRRD0004\ntype: uchar\ndimension: 3\nsizes: 2 2 2\n" + padding + b"data file: /etc/passwd\n\n")
    mha.write_bytes(b"ObjectType = Image\nNDims = 3\n" + padding.replace(b"#", b"Comment =")
                    + b"ElementDataFile = /etc/passwd\n")
    for path in (nrrd, mha):
        with pytest.raises(InputError, match="does not end within"):
            check_image_header(path)
    nrrd.write_bytes(b"NRRD0004\ntype: uchar\ndimension: 3\nsizes: 2 2 2\nencoding: raw\n\n" + padding)
    mha.write_bytes(b"ObjectType = Image\nNDims = 3\nElementDataFile = LOCAL\n" + padding)
    for path in (nrrd, mha):  # a short header with much data after it
        check_image_header(path)


@pytest.mark.parametrize("fields", [
    {"folds": ["0", "--trust-model"]}, {"folds": ["0", "--model", "/tmp/x.pt"]}, {"folds": ["--model=/tmp/x.pt"]},
    {"device": "--trust-model"}, {"device": "-h"},
])
def test_values_that_read_as_options_are_refused(server, alice, fields):
    """The worker parses its command line: a list value such as `folds` must not smuggle options in (a model path,
    --trust-model)."""
    with http(server, alice) as client:
        answer = client.post("/v1/jobs", json=segment_job("upload:" + "A" * 32, **fields))
    assert answer.status_code == 400 and answer.json()["kind"] == "InputError", answer.text
    assert "starts with '-'" in answer.json()["detail"]


def test_uploads_being_sent_count_against_the_limit_and_stalled_ones_are_dropped(server, alice, monkeypatch,
                                                                                  wait_for):
    uploads = server.state.work.uploads
    before = set(uploads.iterdir())
    held = server.state.uploads.pending(owner(alice))
    monkeypatch.setattr(app_module, "MAX_PENDING_UPLOADS", held + 2)
    monkeypatch.setattr(app_module, "UPLOAD_IDLE_S", 1.0)
    head = (f"PUT /v1/uploads HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {alice}\r\nX-MedDL-Suffix: .nii.gz\r\n"
            "Content-Length: 900000\r\n\r\n").encode()
    connections = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(2)]
    try:
        for connection in connections:
            connection.sendall(head + b"\1" * 1000)  # then nothing more: a client gone without closing
        wait_for(lambda: server.state.uploads.writing(owner(alice)) == 2)
        with http(server, alice) as client:  # two are being written: a third is refused at once
            refused = client.put("/v1/uploads", content=b"x", headers={"X-MedDL-Suffix": ".nii.gz"})
        assert refused.status_code == 429 and refused.headers["retry-after"], refused.text
        for connection in connections:  # each stalled upload is answered 408 and its partial file removed
            connection.settimeout(30)
            assert connection.recv(200).startswith(b"HTTP/1.1 408 ")
    finally:
        for connection in connections:
            connection.close()
    wait_for(lambda: set(uploads.iterdir()) == before)
    assert server.state.uploads.writing(owner(alice)) == 0 and server.state.uploads.pending(owner(alice)) == held
    with http(server, alice) as client:
        reference = upload(client, b"x")
        assert client.delete(f"/v1/uploads/{reference}").status_code == 200


def test_the_servers_own_folders_are_hidden_from_clients(server, alice, band_image, wait_for):
    """A worker's message naming the model library or the work folder (a library model's folder) shows neither."""
    with http(server, alice) as client:
        job_id = client.post("/v1/jobs", json=segment_job(f"upload:{upload(client, band_image.read_bytes())}")).json()
        job = server.state.jobs.get(owner(alice), job_id["job"])
        library = server.settings.models_dir
        assert job.hide_paths(f"model folder {library / 'bands'} is damaged") == \
            "model folder <model library>/bands is damaged"
        assert job.hide_paths(f"{server.state.work.uploads}/x.pt") == "<server work folder>/uploads/x.pt"
        assert job.hide_paths(f"{job.folder}/out/output/labels.nii.gz") == "file:output/labels.nii.gz"
        wait_state(client, job.id, ("done", "failed"), wait_for)
        client.post(f"/v1/jobs/{job.id}/release")


@pytest.mark.parametrize("name", ["../x.nii.gz", "/etc/passwd", "..", ".", "a/b.nii.gz", "a\\b.nii.gz",
                                  " x.nii.gz", "x\n.nii.gz"])
def test_output_names_with_folders_are_refused(server, alice, band_image, name):
    with http(server, alice) as client:
        reference = f"upload:{upload(client, band_image.read_bytes())}"
        answer = client.post("/v1/jobs", json=segment_job(reference, name))
        assert answer.status_code == 400 and answer.json()["kind"] == "OutputError", answer.text
        assert client.delete(f"/v1/uploads/{reference[7:]}").status_code == 200


def test_a_model_is_an_id_of_the_library_never_a_path(server, alice, band_image, band_model_file):
    with http(server, alice) as client:
        reference = f"upload:{upload(client, band_image.read_bytes())}"
        for model in (str(band_model_file), str(band_model_file.parent), "../models/bands", "no-such-model",
                      "bands/../bands"):
            answer = client.post("/v1/jobs", json=segment_job(reference, model=model))
            assert answer.status_code == 400 and answer.json()["kind"] == "ModelError", (model, answer.text)
            assert "never a path" in answer.json()["detail"]
        client.delete(f"/v1/uploads/{reference[7:]}")


def test_inputs_are_only_this_keys_uploads(server, alice, bob, band_image):
    with http(server, bob) as as_bob, http(server, alice) as as_alice:
        bobs = f"upload:{upload(as_bob, band_image.read_bytes())}"
        for reference in ("/etc/passwd", str(band_image), bobs, "upload:" + "A" * 32, "upload:../../keys.txt"):
            answer = as_alice.post("/v1/jobs", json=segment_job(reference))
            assert answer.status_code == 400 and answer.json()["kind"] == "InputError", (reference, answer.text)
        assert as_alice.delete(f"/v1/uploads/{bobs[7:]}").status_code == 404
        assert as_bob.delete(f"/v1/uploads/{bobs[7:]}").status_code == 200


@pytest.mark.parametrize(("job", "kind"), [
    ({"command": "segment", "request": "SegmentBatchRequest", "fields": {"batch": "x", "out": "y"}}, "RequestRefused"),
    ({"command": "segment", "request": "NoSuchRequest", "fields": {}}, "RequestRefused"),
    ({"command": "enhance", "request": "SegmentRequest", "fields": {}}, "RequestRefused"),
    ({"command": "models", "request": "ImportRequest", "fields": {"path": "upload:" + "A" * 32}}, "RequestRefused"),
    ({"command": "models", "request": "InstallRequest", "fields": {"model_id": "x"}}, "RequestRefused"),
    ({"command": "train", "request": "TrainRequest", "fields": {"images": [], "labels": [], "label_names": "1:A",
                                                                 "install_as": "mine"}}, "RequestRefused"),
    ({"command": "train", "request": "TrainRequest", "fields": {"images": [], "labels": [], "label_names": "1:A",
                                                                 "install_as": ""}}, "RequestRefused"),
    ({"command": "segment", "request": "SegmentRequest", "fields": {"input": "upload:x", "output": "o.nii.gz",
                                                                     "shell": "rm -rf /"}}, "RequestRefused"),
    ({"command": "segment", "request": "SegmentRequest", "fields": {"input": 5, "output": "o.nii.gz"}},
     "InputError"),
    (["not", "an", "object"], "InputError"),
])
def test_requests_the_server_does_not_run_are_refused(server, alice, job, kind):
    with http(server, alice) as client:
        answer = client.post("/v1/jobs", json=job)
    assert answer.status_code == 400 and answer.json()["kind"] == kind, answer.text


def test_a_key_sees_only_its_own_jobs_and_the_ids_are_unguessable(server, alice, bob, band_image, wait_for):
    with http(server, alice) as as_alice, http(server, bob) as as_bob:
        references = [f"upload:{upload(as_alice, band_image.read_bytes())}" for _ in range(2)]
        submitted = [as_alice.post("/v1/jobs", json=segment_job(reference, trust_model=True)).json()
                     for reference in references]
        jobs = [answer["job"] for answer in submitted]
        assert len(set(jobs)) == 2 and all(len(job) >= 32 and re.fullmatch(r"[A-Za-z0-9_-]+", job) for job in jobs)
        assert all(len(reference) >= 7 + 32 for reference in references)
        assert "--trust-model" not in server.state.jobs.get(owner(alice), jobs[0]).argv  # never a client's to give
        for job in jobs:
            wait_state(as_alice, job, ("done",), wait_for)
        job = jobs[0]
        result = as_alice.get(f"/v1/jobs/{job}/result").json()
        assert result["result"]["labels"] == "file:output/labels.nii.gz"
        assert sorted(result["files"]) == ["output/labels.labels.json", "output/labels.nii.gz"]
        for method, path in [("GET", ""), ("GET", "/events"), ("GET", "/result"), ("POST", "/release"),
                             ("GET", "/files/output/labels.nii.gz"), ("DELETE", "")]:
            assert as_bob.request(method, f"/v1/jobs/{job}{path}").status_code == 404, path
        for path in ("output/../../../keys.txt", "output", "..%2F..%2Fkeys.txt", "output/labels.nii.gz/x"):
            assert as_alice.get(f"/v1/jobs/{job}/files/{path}").status_code == 404, path
        assert as_alice.get(f"/v1/jobs/{job}/files/output/labels.nii.gz").content[:2] == b"\x1f\x8b"
        folder = server.state.jobs.get(owner(alice), job).folder
        assert not (folder / "in").exists()  # the inputs go as soon as the job is done
        for job in jobs:
            assert as_alice.post(f"/v1/jobs/{job}/release").json()["released"]
        assert not folder.exists()
        assert as_alice.get(f"/v1/jobs/{job}/result").status_code == 410


def test_a_key_has_a_limit_of_jobs_and_a_running_job_can_be_cancelled(server, bob, noisy_image, band_image,
                                                                       wait_for):
    jobs_folder = server.state.work.jobs
    jobs = []
    with http(server, bob) as client:
        try:
            for _ in range(4):
                answer = client.post("/v1/jobs", json=slow_job(f"upload:{upload(client, noisy_image.read_bytes())}"))
                assert answer.status_code == 202 and answer.json()["state"] == "queued"
                jobs.append(answer.json()["job"])
            spare = upload(client, noisy_image.read_bytes())
            refused = client.post("/v1/jobs", json=slow_job(f"upload:{spare}"))
            assert refused.status_code == 429 and refused.headers["retry-after"]
            assert client.delete(f"/v1/uploads/{spare}").status_code == 200  # a refused job takes no upload
            assert wait_state(client, jobs[0], ("running",), wait_for)["position"] == 0
            wait_state(client, jobs[1], ("running",), wait_for)  # two workers
            assert [client.get(f"/v1/jobs/{job}").json()["position"] for job in jobs[2:]] == [1, 2]
            wait_for(lambda: any(event["event"] == "progress" for event in client.get(
                f"/v1/jobs/{jobs[0]}/events", params={"after": 0, "wait": 5}).json()["events"]), timeout=60)
            assert (jobs_folder / jobs[0]).is_dir()
            assert client.delete(f"/v1/jobs/{jobs[0]}").json() == {"job": jobs[0], "state": "cancelled"}
            assert not (jobs_folder / jobs[0]).exists()
            assert client.delete(f"/v1/jobs/{jobs[0]}").json()["state"] == "cancelled"  # idempotent
            assert client.get(f"/v1/jobs/{jobs[0]}").json()["state"] == "cancelled"
            assert client.get(f"/v1/jobs/{jobs[0]}/result").status_code == 409
            wait_state(client, jobs[2], ("running",), wait_for)  # the next in the queue runs on a fresh worker
            queued = client.get(f"/v1/jobs/{jobs[3]}/events", params={"after": 0}).json()["events"]
            assert [event["position"] for event in queued if event["event"] == "queued"] == [2, 1]
            for job in jobs[1:]:
                assert client.delete(f"/v1/jobs/{job}").json()["state"] == "cancelled"
                assert not (jobs_folder / job).exists()
            answer = client.post("/v1/jobs", json=segment_job(f"upload:{upload(client, band_image.read_bytes())}"))
            assert answer.status_code == 202
            assert wait_state(client, answer.json()["job"], ("done", "failed"), wait_for)["state"] == "done"
            client.post(f"/v1/jobs/{answer.json()['job']}/release")
        finally:
            for job in jobs:
                client.delete(f"/v1/jobs/{job}")
    assert server.state.jobs.active_jobs(owner(bob)) == 0


def test_jobs_being_prepared_count_against_the_keys_limit(start_server, alice, band_image, monkeypatch):
    """Many submissions at once do not all unpack their zips before the limit is looked at again."""
    server = start_server(max_jobs_per_key=2, workers=1)
    building, peak, lock = [0], [0], threading.Lock()
    build_job = app_module.build_job

    def slow_build(*args, **kwargs):
        with lock:
            building[0] += 1
            peak[0] = max(peak[0], building[0])
        time.sleep(0.5)
        try:
            return build_job(*args, **kwargs)
        finally:
            with lock:
                building[0] -= 1

    monkeypatch.setattr(app_module, "build_job", slow_build)
    with http(server, alice) as client:
        references = [f"upload:{upload(client, band_image.read_bytes())}" for _ in range(6)]
    answers = []

    def submit(reference: str) -> None:
        with http(server, alice) as client:
            answers.append(client.post("/v1/jobs", json=segment_job(reference)).status_code)

    threads = [threading.Thread(target=submit, args=(reference,)) for reference in references]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert peak[0] <= 2 and answers.count(202) >= 2 and set(answers) <= {202, 429}, (peak, answers)


def test_a_hostile_image_fails_as_it_would_locally(server, alice, band_image, wait_for):
    data = band_image.read_bytes()
    with http(server, alice) as client:
        job = client.post("/v1/jobs", json=segment_job(f"upload:{upload(client, data[: len(data) // 2])}")).json()
        status = wait_state(client, job["job"], ("done", "failed"), wait_for)
    assert status["state"] == "failed"
    assert status["error"]["kind"] == "InputError" and status["error"]["exit_code"] == 3
    assert "upload:" in status["error"]["message"] and str(server.state.work.path) not in status["error"]["message"]
    assert not (server.state.work.jobs / job["job"]).exists()


def _zip(entries: list[tuple], symlink: bool = False) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in entries:
            info = zipfile.ZipInfo(name)
            if symlink:
                info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, content)
    return buffer.getvalue()


@pytest.mark.parametrize(("entries", "symlink", "message"), [
    ([("/etc/cron.d/x", b"x")], False, "absolute"),
    ([("../../x", b"x")], False, "'..'"),
    ([("a/../../x", b"x")], False, "'..'"),
    ([("C:/x", b"x")], False, "absolute"),
    ([("link", b"/etc/passwd")], True, "link"),
    ([("a", b"x"), ("A", b"y")], False, "twice"),
    ([("big", b"\0" * 5000)], False, "limit"),
    ([("x.nrrd", b"NRRD0004\ntype: uchar\ndimension: 1\nsizes: 4\nencoding: raw\ndata file: /etc/passwd\n\n")],
     False, "data file"),
])
def test_zip_uploads_unpack_only_inside_their_folder(tmp_path, entries, symlink, message):
    archive = tmp_path / "upload.zip"
    archive.write_bytes(_zip(entries, symlink))
    with pytest.raises(InputError, match=message):
        extract_zip(archive, tmp_path / "unpacked", max_bytes=4000)
    assert not (tmp_path / "unpacked").exists()
    assert sorted(os.listdir(tmp_path)) == ["upload.zip"]


def test_a_zip_whose_list_of_entries_is_too_large_is_refused_before_it_is_read(tmp_path, monkeypatch):
    """zipfile makes an object of every entry of the central directory at once (1 GB of 47-byte entries: several
    GB of memory in the server): its size is checked first."""
    monkeypatch.setattr(uploads_module, "MAX_ZIP_DIRECTORY_BYTES", 10_000)
    archive = tmp_path / "upload.zip"
    archive.write_bytes(_zip([(f"{number}.dcm", b"") for number in range(500)]))
    with pytest.raises(InputError, match="list of entries"):
        extract_zip(archive, tmp_path / "unpacked", max_bytes=4000)
    assert sorted(os.listdir(tmp_path)) == ["upload.zip"]
    archive.write_bytes(_zip([(f"{number}.dcm", b"") for number in range(50)]))
    assert len(list(extract_zip(archive, tmp_path / "unpacked", max_bytes=4000).iterdir())) == 50


def test_a_zip_holding_one_folder_unpacks_to_that_folder(tmp_path):
    archive = tmp_path / "upload.zip"
    archive.write_bytes(_zip([("series/a.dcm", b"1"), ("series/sub/b.dcm", b"2")]))
    folder = extract_zip(archive, tmp_path / "unpacked", max_bytes=4000)
    assert folder == tmp_path / "unpacked" / "series"
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")) == ["a.dcm", "sub", "sub/b.dcm"]


def test_results_and_unused_uploads_expire(start_server, alice, band_image, wait_for):
    server = start_server(result_ttl_s=1.0, workers=1)
    with http(server, alice) as client:
        unused = upload(client, band_image.read_bytes())
        job = client.post("/v1/jobs", json=segment_job(f"upload:{upload(client, band_image.read_bytes())}")).json()
        wait_state(client, job["job"], ("done",), wait_for)
        wait_for(lambda: not list(server.state.work.jobs.iterdir()) and not list(server.state.work.uploads.iterdir()),
                 timeout=15)
        assert client.get(f"/v1/jobs/{job['job']}").status_code == 404
        assert client.delete(f"/v1/uploads/{unused}").status_code == 404


def test_a_restarted_server_removes_what_a_killed_one_left(start_server, alice, band_image, tmp_path, wait_for):
    work = tmp_path / "shared-work"
    first = start_server(work_dir=work, workers=1)
    with http(first, alice) as client:
        upload(client, band_image.read_bytes())
        job = client.post("/v1/jobs", json=segment_job(f"upload:{upload(client, band_image.read_bytes())}")).json()
        wait_state(client, job["job"], ("done",), wait_for)
    with pytest.raises(WorkDirError, match="another MedDL server"):
        WorkDir(work)
    first.state.work.clean = lambda: None  # as if the server were killed: nothing cleaned up
    first.stop()
    assert list(work.glob("jobs/*/out/output/*")) and list(work.glob("uploads/*"))
    (work / "uploads" / ".partial-abc").write_bytes(b"half")
    second = start_server(work_dir=work, workers=1, allow_model_uploads=False)
    assert sorted(p.name for p in work.iterdir()) == sorted([MARKER, "jobs", "sessions", "uploads", "worker"])
    assert not list(work.glob("jobs/*")) and not list(work.glob("uploads/*"))
    with http(second, alice) as client:
        assert client.get(f"/v1/jobs/{job['job']}").status_code == 404
        again = client.post("/v1/jobs", json=segment_job(f"upload:{upload(client, band_image.read_bytes())}")).json()
        assert wait_state(client, again["job"], ("done",), wait_for)["state"] == "done"
        refused = client.post("/v1/jobs", json=segment_job(f"upload:{'A' * 32}", model=f"upload:{'B' * 32}"))
        assert refused.status_code == 400 and "allow-model-uploads" in refused.json()["detail"]


def test_a_work_folder_holding_other_files_is_refused(tmp_path):
    (tmp_path / "mine.txt").write_text("precious")
    with pytest.raises(WorkDirError, match="not a MedDL server's"):
        WorkDir(tmp_path)
    assert (tmp_path / "mine.txt").read_text() == "precious"


def test_events_long_poll_returns_at_once_when_something_happens(server, alice, band_image, wait_for):
    with http(server, alice) as client:
        job = client.post("/v1/jobs", json=segment_job(f"upload:{upload(client, band_image.read_bytes())}")).json()
        started = time.monotonic()
        after, states = 0, []
        while not states or states[-1] not in ("done", "failed"):
            answer = client.get(f"/v1/jobs/{job['job']}/events", params={"after": after, "wait": 30}).json()
            assert answer["next"] >= after
            after = answer["next"]
            states.append(answer["state"])
        assert time.monotonic() - started < 25 and states[-1] == "done"
        again = client.get(f"/v1/jobs/{job['job']}/events", params={"after": after, "wait": 30}).json()
        assert again == {"events": [], "next": after, "state": "done"}  # finished: no waiting
        client.post(f"/v1/jobs/{job['job']}/release")


def test_the_command_line_makes_keys_and_refuses_to_serve_without_one(tmp_path, capsys):
    keys_file = tmp_path / "keys.txt"
    assert main(["serve-key", "carol", "--api-key-file", str(keys_file)]) == 0
    key = capsys.readouterr().out.strip()
    assert len(key) >= 40 and key not in keys_file.read_text()
    assert keys.KeyRing(keys_file).match(key).name == "carol"
    assert stat.S_IMODE(keys_file.stat().st_mode) == 0o600
    assert main(["serve-key", "carol", "--api-key-file", str(keys_file)]) == 2
    (tmp_path / "empty.txt").write_text("")
    assert main(["serve", "--api-key-file", str(tmp_path / "empty.txt"), "--work-dir", str(tmp_path / "w")]) == 2
    assert "holds no key" in capsys.readouterr().err
    assert main(["serve", "--api-key-file", str(tmp_path / "none.txt"), "--work-dir", str(tmp_path / "w")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert _loopback("127.0.0.1") and _loopback("::1") and _loopback("localhost")
    assert not _loopback("0.0.0.0") and not _loopback("192.168.1.2") and not _loopback("gpu-box")


def test_the_command_line_works_without_the_server_extra(tmp_path, monkeypatch, capsys):
    probe = "import sys, meddl.cli; print(sorted({'fastapi', 'uvicorn'} & set(sys.modules)))"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]"
    keys.add_key("dave", tmp_path / "keys.txt")
    monkeypatch.setitem(sys.modules, "fastapi", None)  # as if it were not installed
    assert main(["serve", "--api-key-file", str(tmp_path / "keys.txt"), "--work-dir", str(tmp_path / "w")]) == 2
    assert 'pip install "meddl[server]"' in capsys.readouterr().err
