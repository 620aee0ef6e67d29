"""ServerClient against a real server on loopback: results equal local runs, errors are the local ones, cancel,
many clients at once, a server that stops."""

from __future__ import annotations

import csv
import http.server
import json
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from meddl.cli.enhance import EnhanceRequest
from meddl.cli.parser import build_parser
from meddl.cli.reporting import execute
from meddl.cli.segment import SegmentRequest
from meddl.errors import InputError, MeddlError, ModelError
from meddl.image import Image
from meddl.io import read_image, write_image
from meddl.progress import no_progress
from meddl.server import keys
from meddl.server import transport as transport_module
from meddl.server.client import (
    JobCancelled,
    RemoteError,
    ServerClient,
    ServerError,
    ServerUnavailable,
    remote_error,
)
from meddl.server.exchange import Exchange, restore_paths
from meddl.server.hiding import hide_paths_in_file
from meddl_testing import band_volume, write_dicom_series


def run_locally(argv: list[str]):
    """A command run here, in this process, as `meddl ...` would run it."""
    return execute(build_parser().parse_args(argv), no_progress)


def same_image(a: Path, b: Path) -> None:
    first, second = read_image(a), read_image(b)
    np.testing.assert_array_equal(first.array, second.array)
    np.testing.assert_allclose(first.spacing, second.spacing)
    np.testing.assert_allclose(first.origin, second.origin)
    np.testing.assert_allclose(first.direction, second.direction)


def test_a_segmentation_through_the_server_equals_the_local_one(server, alice, band_image, band_model_file,
                                                               tmp_path):
    local = run_locally(["segment", str(band_image), str(tmp_path / "local.nii.gz"), "--model", str(band_model_file)])
    reports = []
    remote = ServerClient(server.url, alice).run(
        SegmentRequest(str(band_image), str(tmp_path / "remote.nii.gz"), model="bands"),
        progress=lambda fraction, message: reports.append((fraction, message)))
    assert remote.labels == str(tmp_path / "remote.nii.gz")
    assert remote.label_table == str(tmp_path / "remote.labels.json")
    assert remote.model == local.model
    same_image(tmp_path / "local.nii.gz", tmp_path / "remote.nii.gz")
    np.testing.assert_array_equal(read_image(tmp_path / "remote.nii.gz").array, band_volume())
    assert json.loads(Path(local.label_table).read_text()) == json.loads(Path(remote.label_table).read_text())
    fractions = [fraction for fraction, _ in reports]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert any("uploading" in message for _, message in reports)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".meddl")]
    assert not list(server.state.work.jobs.iterdir())  # released


def test_a_dicom_folder_travels_zipped(server, alice, band_model_file, tmp_path):
    series = tmp_path / "series"
    series.mkdir()
    write_dicom_series(Image(band_volume(), (0.8, 0.9, 2.5), (10.0, -20.0, 30.0)), series)
    run_locally(["segment", str(series), str(tmp_path / "local.nii.gz"), "--model", str(band_model_file)])
    result = ServerClient(server.url, alice).run(SegmentRequest(str(series), str(tmp_path / "remote.nii.gz"),
                                                                model="bands"))
    assert result.labels == str(tmp_path / "remote.nii.gz")
    same_image(tmp_path / "local.nii.gz", tmp_path / "remote.nii.gz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["local.labels.json", "local.nii.gz", "remote.labels.json",
                                                          "remote.nii.gz", "series"]


def test_a_local_model_file_travels_when_the_server_allows_it(server, alice, band_image, band_model_file, tmp_path):
    result = ServerClient(server.url, alice).run(
        SegmentRequest(str(band_image), str(tmp_path / "out.nii.gz"), model=str(band_model_file), trust_model=True))
    np.testing.assert_array_equal(read_image(result.labels).array, band_volume())


def test_a_failed_job_raises_the_local_error_and_keeps_what_was_there(server, alice, band_image, band_model_file,
                                                                       tmp_path):
    data = band_image.read_bytes()
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError) as local:
        run_locally(["segment", str(truncated), str(tmp_path / "local.nii.gz"), "--model", str(band_model_file)])
    output = tmp_path / "out.nii.gz"
    output.write_bytes(b"an earlier result")
    with pytest.raises(InputError) as remote:
        ServerClient(server.url, alice).run(SegmentRequest(str(truncated), str(output), model="bands"))
    assert remote.value.exit_code == local.value.exit_code == 3
    assert str(remote.value) == str(local.value)  # the server's paths turned back into this one's
    assert output.read_bytes() == b"an earlier result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.nii.gz", "truncated.nii.gz"]


def test_refusals_are_the_local_errors(server, alice, band_image, tmp_path):
    client = ServerClient(server.url, alice)
    with pytest.raises(ModelError, match="not a model of this server's library"):
        client.run(SegmentRequest(str(band_image), str(tmp_path / "out.nii.gz"), model="no-such-model"))
    with pytest.raises(InputError, match="input not found"):
        client.run(SegmentRequest(str(tmp_path / "missing.nii.gz"), str(tmp_path / "out.nii.gz"), model="bands"))
    with pytest.raises(MeddlError, match="does not exist"):
        client.run(SegmentRequest(str(band_image), str(tmp_path / "no" / "out.nii.gz"), model="bands"))
    big = tmp_path / "big.nii.gz"
    big.write_bytes(b"\0" * (2 << 20))
    with pytest.raises(InputError, match="more than the server"):
        client.run(SegmentRequest(str(big), str(tmp_path / "out.nii.gz"), model="bands"))
    assert server.state.uploads.pending(keys.hash_key(alice).hex()) == 0  # the refused job's upload was removed
    assert not list(tmp_path.glob("out*"))


def test_a_wrong_key_is_a_clear_error_that_does_not_show_the_key(server):
    secret = "not-the-right-key-4f1c"
    with pytest.raises(ServerError, match="refused the API key") as refused:
        ServerClient(server.url, secret).models()
    assert secret not in str(refused.value) and secret not in repr(ServerClient(server.url, secret))


def test_the_model_library(server, alice):
    assert "bands" in [row["id"] for row in ServerClient(server.url, alice).models()]


def test_cancelling_a_run_removes_the_job(server, alice, noisy_image, tmp_path, wait_for):
    messages = []
    output = tmp_path / "denoised.nii.gz"
    with pytest.raises(JobCancelled):
        ServerClient(server.url, alice).run(
            EnhanceRequest(str(noisy_image), str(output), method="network", steps=100000),
            progress=lambda fraction, message: messages.append(message),
            cancelled=lambda: any("learning" in message for message in messages))
    assert not output.exists() and not list(tmp_path.iterdir())
    wait_for(lambda: not list(server.state.work.jobs.iterdir()), timeout=15)


def test_sixteen_clients_at_once_all_get_their_results(server, alice, bob, tmp_path):
    """8 clients per key against a limit of 4 jobs per key and 2 workers: the server queues or refuses (429), the
    clients wait and retry; every result is right, none is lost or mixed up."""
    cases = []
    for number in range(16):
        volume = np.roll(band_volume(), number, axis=number % 3)
        path = tmp_path / f"case{number}.nii.gz"
        write_image(Image(volume, (1.0, 1.0, 1.0 + number / 10)), path)
        cases.append((path, tmp_path / f"labels{number}.nii.gz", volume))
    outcomes: dict[int, object] = {}

    def client(number: int) -> None:
        image, output, _ = cases[number]
        try:
            outcomes[number] = ServerClient(server.url, (alice, bob)[number % 2]).run(
                SegmentRequest(str(image), str(output), model="bands"))
        except Exception as error:  # reported below
            outcomes[number] = error

    started = time.monotonic()
    threads = [threading.Thread(target=client, args=(number,)) for number in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert time.monotonic() - started < 90
    assert sorted(outcomes) == list(range(16)), "a client did not finish"
    for number, (_, output, volume) in enumerate(cases):
        assert not isinstance(outcomes[number], Exception), outcomes[number]
        assert outcomes[number].labels == str(output)
        np.testing.assert_array_equal(read_image(output).array, volume)
    assert not list(server.state.work.jobs.iterdir()) and not list(server.state.work.uploads.iterdir())


def test_a_server_that_stops_mid_job_is_a_clear_error(start_server, alice, noisy_image, tmp_path, wait_for):
    stopping = start_server(workers=1)
    failures = []

    def run() -> None:
        try:
            ServerClient(stopping.url, alice).run(
                EnhanceRequest(str(noisy_image), str(tmp_path / "out.nii.gz"), method="network", steps=100000))
        except Exception as error:  # checked below
            failures.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    wait_for(lambda: [job for job in stopping.state.jobs._jobs.values() if job.state == "running"], timeout=60)
    stopping.stop()
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert len(failures) == 1 and isinstance(failures[0], ServerUnavailable), failures
    message = str(failures[0])
    assert "stopped answering" in message and stopping.url in message and alice not in message
    assert not (tmp_path / "out.nii.gz").exists()
    with pytest.raises(ServerUnavailable, match="cannot reach"):
        ServerClient(stopping.url, alice).models()


def test_error_kinds_map_to_the_engine_classes():
    assert type(remote_error("ModelError", "m", 4)) is ModelError
    unknown = remote_error("ArgumentError", "bad arguments", 2)
    assert isinstance(unknown, RemoteError) and unknown.kind == "ArgumentError" and unknown.exit_code == 2
    assert remote_error(None, "x", "not a code").exit_code == 1


def test_paths_in_text_outputs_travel_as_tokens_and_come_back_local(tmp_path):
    server_folder = tmp_path / "server" / "job"
    table = tmp_path / "table.csv"
    table.write_text(f"input,class\n{server_folder}/in/{'U' * 32}.nii.gz,tumour\n"
                     f"\"{server_folder}/out/saliency/maps/x, y.nii.gz\",none\n")
    replacements = [(f"{server_folder}/in/{'U' * 32}.nii.gz", f"upload:{'U' * 32}"),
                    (f"{server_folder}/out/saliency/", "file:saliency/")]

    def hide(text: str) -> str:
        for prefix, token in replacements:
            text = text.replace(prefix, token)
        return text

    hide_paths_in_file(table, hide)
    assert str(server_folder) not in table.read_text()
    exchange = Exchange()
    local_input = tmp_path / "my, scan.nii.gz"
    exchange.inputs["U" * 32] = local_input
    exchange.outputs["saliency"] = [tmp_path / "maps"]
    restore_paths(table, "table.csv", exchange)
    rows = list(csv.reader(table.open()))
    assert rows[1] == [str(local_input), "tumour"]
    assert rows[2] == [str(tmp_path / "maps" / "x, y.nii.gz"), "none"]
    assert exchange.local_file("saliency/maps/x.nii.gz") == tmp_path / "maps" / "x.nii.gz"
    for unsafe in ("saliency/../x", "other/x", "saliency", "saliency//x", "saliency/a\\b"):
        with pytest.raises(ServerError):
            exchange.local_file(unsafe)


class HostileServer:
    """A fake MedDL server on loopback whose answers a test sets (path prefix -> (status, headers, body)); it
    records the requests it got."""

    def __init__(self) -> None:
        self.answers: dict[tuple[str, str], tuple[int, dict, bytes]] = {}
        self.requests: list[tuple[str, str, dict]] = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def answer(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                if length:
                    self.rfile.read(length)
                owner.requests.append((self.command, self.path, dict(self.headers)))
                found = [(prefix, value) for (method, prefix), value in owner.answers.items()
                         if method == self.command and self.path.startswith(prefix)]
                status, headers, body = max(found, key=lambda item: len(item[0]))[1] if found else (404, {}, b"{}")
                self.send_response(status)
                for key, value in {"Content-Length": str(len(body)), **headers}.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_PUT = do_POST = do_DELETE = answer

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def set(self, method: str, prefix: str, answer: object, status: int = 200, headers: dict | None = None) -> None:
        body = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
        self.answers[(method, prefix)] = (status, headers or {}, body)

    def a_job_that_ends(self, result: object, files: object) -> None:
        """Answers for a whole run whose job is done with this result and these files."""
        self.set("GET", "/v1/health", {"meddl": "x", "api": 1, "max_upload_bytes": 1 << 20})
        self.set("PUT", "/v1/uploads", {"upload": "U" * 32, "size": 1}, 201)
        self.set("POST", "/v1/jobs", {"job": "J" * 32, "state": "queued", "position": 1}, 202)
        self.set("GET", "/v1/jobs/" + "J" * 32 + "/events", {"events": [], "next": 0, "state": "done"})
        self.set("GET", "/v1/jobs/" + "J" * 32 + "/result", {"result": result, "files": files})
        self.set("GET", "/v1/jobs/" + "J" * 32 + "/files/", b"hostile bytes")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hostile():
    server = HostileServer()
    yield server
    server.close()


def test_a_server_never_makes_the_client_write_outside_the_output_folders(hostile, band_image, tmp_path):
    (tmp_path / "out").mkdir()
    output = tmp_path / "out" / "labels.nii.gz"
    for files in (["output/../../evil.txt"], ["output/labels.nii.gz/../../evil.txt"], ["other/evil.txt"],
                  ["output//evil.txt"], ["output/sub\\..\\..\\evil.txt"], ["output/./evil.txt"], [5],
                  "output/labels.nii.gz"):
        hostile.a_job_that_ends({"labels": "file:output/labels.nii.gz"}, files)
        with pytest.raises(ServerError, match="not inside an output|not the MedDL API"):
            ServerClient(hostile.url, "key").run(SegmentRequest(str(band_image), str(output), model="bands"))
        assert sorted(p.name for p in tmp_path.rglob("*")) == ["out"], files
    # an input's local name standing in for its id may not make a path either (an input folder named `..`)
    exchange = Exchange()
    exchange.outputs["output"] = [output]
    exchange.stems["U" * 32] = ".."
    with pytest.raises(ServerError, match="not inside an output"):
        exchange.local_file("output/" + "U" * 32 + "/evil.txt")
    assert exchange.local_file("output/" + "U" * 32 + "_x.nii.gz") == output.parent / ".._x.nii.gz"


@pytest.mark.parametrize(("status", "answer", "headers"), [
    (200, [1, 2, 3], None),
    (200, b"[" * 100000 + b"]" * 100000, None),
    (200, b"{" + b" " * 5000 + b"}", None),  # larger than the client reads (MAX_ANSWER_BYTES made small below)
    (200, b"<html>a proxy's page</html>", None),
    (302, b"", {"Location": "http://127.0.0.1:9/v1/health"}),
    (301, b"moved", {"Location": "https://example.org/"}),
])
def test_answers_that_are_not_the_api_are_clear_errors(hostile, monkeypatch, status, answer, headers):
    monkeypatch.setattr(transport_module, "MAX_ANSWER_BYTES", 4096)
    hostile.set("GET", "/v1/health", answer, status, headers)
    key = "the-key-3f9a"
    with pytest.raises(ServerError) as refused:
        ServerClient(hostile.url, key).health()
    assert key not in str(refused.value)
    assert [(method, path) for method, path, _ in hostile.requests] == [("GET", "/v1/health")]  # no redirect followed


@pytest.mark.parametrize("events", [
    {"events": "progress", "next": 1, "state": "running"}, {"events": ["x"], "next": 1, "state": "done"},
    {"events": [], "next": "1", "state": "done"}, {"events": [], "next": None, "state": "done"},
])
def test_malformed_events_or_results_are_clear_errors(hostile, band_image, tmp_path, events):
    hostile.a_job_that_ends({"labels": "file:output/labels.nii.gz"}, ["output/labels.nii.gz"])
    hostile.set("GET", "/v1/jobs/" + "J" * 32 + "/events", events)
    with pytest.raises(ServerError, match="not the MedDL API"):
        ServerClient(hostile.url, "key").run(SegmentRequest(str(band_image), str(tmp_path / "o.nii.gz"), model="b"))
    hostile.a_job_that_ends(["not", "an", "object"], ["output/o.nii.gz"])
    with pytest.raises(ServerError, match="not the MedDL API"):
        ServerClient(hostile.url, "key").run(SegmentRequest(str(band_image), str(tmp_path / "o.nii.gz"), model="b"))
    assert not list(tmp_path.iterdir())


def test_a_key_that_http_cannot_carry_is_refused_before_anything_is_sent():
    with pytest.raises(InputError, match="not a single word"):
        ServerClient("http://127.0.0.1:9", "schl\u00fcssel")


def test_tls_with_the_servers_own_certificate(start_server, alice, band_image, tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    certificate, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(certificate)],
                   check=True, capture_output=True)
    secure = start_server({"ssl_certfile": str(certificate), "ssl_keyfile": str(key)}, workers=1)
    assert secure.url.startswith("https://")
    result = ServerClient(secure.url, alice, verify=certificate).run(
        SegmentRequest(str(band_image), str(tmp_path / "out.nii.gz"), model="bands"))
    np.testing.assert_array_equal(read_image(result.labels).array, band_volume())
    with pytest.raises(ServerError, match="not trusted") as untrusted:
        ServerClient(secure.url, alice).models()  # the system's authorities do not know a self-signed certificate
    assert alice not in str(untrusted.value)


def test_a_result_naming_another_local_file_is_refused():
    """A hostile server's result must not point a front end at a local file outside the job's inputs and outputs
    (Slicer's fill keeps `state` and sends it again as the next round's input)."""
    from meddl.server.client import ServerError

    exchange = Exchange()
    home_file = Path(__file__).resolve()
    exchange.outputs["output"] = [Path(tempfile.gettempdir()) / "meddl-out" / "labels.nii.gz"]
    with pytest.raises(ServerError, match="not one of this job's inputs or outputs"):
        exchange.check_local(str(home_file))
    assert exchange.check_local("bands") == "bands"
    inside = Path(tempfile.gettempdir()) / "meddl-out"
    inside.mkdir(exist_ok=True)
    (inside / "labels.nii.gz").write_bytes(b"x")
    assert exchange.check_local(str(inside / "labels.nii.gz")) == str(inside / "labels.nii.gz")
    exchange.inputs["u" * 20] = home_file
    assert exchange.check_local(str(home_file)) == str(home_file)
