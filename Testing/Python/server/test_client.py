"""ServerClient against a real server on loopback: results equal local runs, errors are the local ones, cancel,
many clients at once, a server that stops."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
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
from meddl.server.client import (
    JobCancelled,
    RemoteError,
    ServerClient,
    ServerError,
    ServerUnavailable,
    _Exchange,
    _restore_paths,
    remote_error,
)
from meddl.server.jobs import hide_paths_in_file
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
    exchange = _Exchange()
    local_input = tmp_path / "my, scan.nii.gz"
    exchange.inputs["U" * 32] = local_input
    exchange.outputs["saliency"] = [tmp_path / "maps"]
    _restore_paths(table, "table.csv", exchange)
    rows = list(csv.reader(table.open()))
    assert rows[1] == [str(local_input), "tumour"]
    assert rows[2] == [str(tmp_path / "maps" / "x, y.nii.gz"), "none"]
    assert exchange.local_file("saliency/maps/x.nii.gz") == tmp_path / "maps" / "x.nii.gz"
    for unsafe in ("saliency/../x", "other/x", "saliency", "saliency//x", "saliency/a\\b"):
        with pytest.raises(ServerError):
            exchange.local_file(unsafe)


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
