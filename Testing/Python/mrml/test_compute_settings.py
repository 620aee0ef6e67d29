"""The Compute setting's logic behind Slicer's Compute panel (MedDLLib.compute, no Qt): saving and loading it in a
settings object, checking the server address and key, testing a connection, and the model list it selects."""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from meddl.errors import MeddlError
from MedDLLib import compute
from MedDLLib.compute import (
    SETTINGS_KEY,
    SETTINGS_URL,
    Compute,
    check_api_key,
    check_connection,
    check_server_url,
    current_compute,
    forget_server_models,
    load_compute,
    model_rows_for,
    save_compute,
    server_model_rows,
    server_models,
    use_server,
)
from MedDLLib.model_library import library_rows

KEY = "s3cret-key-0123456789"


class DictSettings:
    """What the logic needs of QSettings: value(key) (None when unset) and setValue(key, value)."""

    def __init__(self, values=None) -> None:
        self.values = dict(values or {})

    def value(self, key):
        return self.values.get(key)

    def setValue(self, key, value) -> None:
        self.values[key] = value


@pytest.fixture(autouse=True)
def this_computer_after():
    yield
    compute.use_this_computer()
    forget_server_models()


# ---- the address and the key

@pytest.mark.parametrize(("url", "stored"), [
    ("https://gpu-box:8765", "https://gpu-box:8765"),
    ("  https://gpu-box:8765/ ", "https://gpu-box:8765"),
    ("HTTPS://gpu-box/meddl/", "https://gpu-box/meddl"),
    ("http://127.0.0.1:8765", "http://127.0.0.1:8765"),
    ("http://localhost:8765", "http://localhost:8765"),
    ("http://[::1]:8765", "http://[::1]:8765"),
])
def test_server_addresses_accepted(url, stored):
    assert check_server_url(url) == (stored, [])


@pytest.mark.parametrize(("url", "reason"), [
    ("", "enter the MedDL server's address"),
    ("gpu-box:8765", "https:// or http://"),
    ("ftp://gpu-box", "https:// or http://"),
    ("https://", "names no host"),
    ("https://:8765", "names no host"),
    ("https://alice:pw@gpu-box", "user name or password"),
    ("https://alice@gpu-box", "user name or password"),
    ("https://gpu-box/?key=abc", "query or fragment"),
    ("https://gpu-box#x", "query or fragment"),
    ("https://gpu-box?", "query or fragment"),
    ("https://gpu-box:99999", "invalid port"),
    ("https://gpu-box:port", "invalid port"),
    ("https://gpu box", "spaces"),
])
def test_server_addresses_refused(url, reason):
    with pytest.raises(ValueError, match=reason):
        check_server_url(url)


def test_a_password_in_the_address_is_not_quoted():
    with pytest.raises(ValueError) as error:
        check_server_url(f"https://alice:{KEY}@gpu-box")
    assert KEY not in str(error.value)


def test_http_to_another_computer_is_warned_about():
    stored, warnings = check_server_url("http://gpu-box:8765")
    assert stored == "http://gpu-box:8765"
    assert len(warnings) == 1 and "unencrypted" in warnings[0] and "https" in warnings[0]
    assert check_server_url("http://10.0.0.5")[1]
    assert not check_server_url("https://gpu-box")[1]
    assert not check_server_url("http://127.0.0.2")[1]  # all of 127/8 is loopback


@pytest.mark.parametrize("key", ["", "   ", "two words", "tab\tkey", "bell\x07"])
def test_keys_refused_without_being_quoted(key):
    with pytest.raises(ValueError) as error:
        check_api_key(key)
    assert not key.strip() or key.strip() not in str(error.value)


def test_keys_are_stripped():
    assert check_api_key(f"  {KEY}\n") == KEY


# ---- saving and loading

def test_save_stores_the_server_and_every_job_follows_it():
    settings = DictSettings()
    assert save_compute(settings, "https://gpu-box:8765/", f" {KEY} ") == []
    assert settings.values == {SETTINGS_URL: "https://gpu-box:8765", SETTINGS_KEY: KEY}
    assert current_compute() == Compute("https://gpu-box:8765", KEY)
    assert KEY not in repr(current_compute())


def test_save_returns_the_warning_for_http_to_another_computer():
    settings = DictSettings()
    warnings = save_compute(settings, "http://gpu-box:8765", KEY)
    assert len(warnings) == 1 and "unencrypted" in warnings[0]
    assert current_compute().server_url == "http://gpu-box:8765"


def test_save_this_computer_clears_the_server_and_its_key():
    settings = DictSettings({SETTINGS_URL: "https://gpu-box", SETTINGS_KEY: KEY})
    use_server("https://gpu-box", KEY)
    assert save_compute(settings, "", "ignored") == []
    assert settings.values == {SETTINGS_URL: "", SETTINGS_KEY: ""}
    assert current_compute() == Compute()


def test_an_empty_key_keeps_the_saved_key_of_the_same_server():
    settings = DictSettings({SETTINGS_URL: "https://gpu-box:8765", SETTINGS_KEY: KEY})
    save_compute(settings, "https://gpu-box:8765/", "")
    assert settings.values[SETTINGS_KEY] == KEY
    assert current_compute() == Compute("https://gpu-box:8765", KEY)


def test_the_saved_key_is_never_given_to_another_server():
    settings = DictSettings({SETTINGS_URL: "https://gpu-box:8765", SETTINGS_KEY: KEY})
    use_server("https://gpu-box:8765", KEY)
    with pytest.raises(ValueError, match="another server") as error:
        save_compute(settings, "https://elsewhere:8765", "")
    assert KEY not in str(error.value)
    assert settings.values == {SETTINGS_URL: "https://gpu-box:8765", SETTINGS_KEY: KEY}  # nothing changed
    assert current_compute() == Compute("https://gpu-box:8765", KEY)
    with pytest.raises(ValueError, match="enter the API key"):
        save_compute(DictSettings(), "https://gpu-box:8765", "")


@pytest.mark.parametrize(("url", "key"), [("https://a:b@gpu-box", KEY), ("https://gpu-box", "two words")])
def test_a_refused_save_changes_nothing(url, key):
    settings = DictSettings({SETTINGS_URL: "https://gpu-box:8765", SETTINGS_KEY: KEY})
    use_server("https://gpu-box:8765", KEY)
    with pytest.raises(ValueError):
        save_compute(settings, url, key)
    assert settings.values == {SETTINGS_URL: "https://gpu-box:8765", SETTINGS_KEY: KEY}
    assert current_compute() == Compute("https://gpu-box:8765", KEY)


def test_load_makes_the_saved_setting_current():
    settings = DictSettings()
    save_compute(settings, "https://gpu-box:8765", KEY)
    compute.use_this_computer()
    assert load_compute(settings) == Compute("https://gpu-box:8765", KEY)
    assert current_compute() == Compute("https://gpu-box:8765", KEY)
    save_compute(settings, "", "")
    use_server("https://gpu-box:8765", KEY)
    assert load_compute(settings) == Compute()


@pytest.mark.parametrize("values", [{}, {SETTINGS_URL: None, SETTINGS_KEY: None}, {SETTINGS_URL: ""},
                                    {SETTINGS_URL: 3, SETTINGS_KEY: 4}])
def test_load_of_nothing_saved_is_this_computer(values):
    use_server("https://gpu-box", KEY)
    assert load_compute(DictSettings(values)) == Compute()


@pytest.mark.parametrize("values", [{SETTINGS_URL: "https://gpu-box"},  # no key
                                    {SETTINGS_URL: "https://gpu-box", SETTINGS_KEY: ""},
                                    {SETTINGS_URL: "ftp://gpu-box", SETTINGS_KEY: KEY},
                                    {SETTINGS_URL: f"https://u:{KEY}@gpu-box", SETTINGS_KEY: KEY},
                                    {SETTINGS_URL: "https://gpu-box", SETTINGS_KEY: f"{KEY} {KEY}"}])
def test_a_saved_setting_that_is_not_valid_is_logged_and_jobs_run_here(values, caplog):
    use_server("https://gpu-box", KEY)
    with caplog.at_level(logging.WARNING):
        assert load_compute(DictSettings(values)) == Compute()
    assert "jobs run on this computer" in caplog.text
    assert KEY not in caplog.text


# ---- the model list

SERVER_MODELS = [
    {"id": "deepbet-brain-extraction", "title": "Brain extraction (deepbet)", "task": "segmentation",
     "modality": "MR", "body_part": "head", "license": "MIT", "description": "skull stripping", "installed": True,
     "size_bytes": 12000000, "accuracy": "", "cpu_seconds": 8.5, "gpu_seconds": None, "origin": "catalog",
     "broken": ""},
    {"id": "spleen-ct", "title": "Spleen", "task": "segmentation", "modality": "CT", "installed": False},
    {"id": "mri-classifier", "title": "MRI contrast", "task": "classification", "installed": True},
    {"id": "", "title": "no id"},
    {"title": "no id either"},
    {"id": "odd-fields", "title": 5, "task": "segmentation", "installed": "yes", "size_bytes": "big",
     "cpu_seconds": True, "extra": "ignored"},
]


def test_server_rows_are_filtered_as_the_local_list_is():
    rows = server_model_rows(SERVER_MODELS, "segmentation")
    assert [row.id for row in rows] == ["deepbet-brain-extraction", "spleen-ct", "odd-fields"]
    assert rows[0].title == "Brain extraction (deepbet)" and rows[0].installed and rows[0].cpu_seconds == 8.5
    assert rows[2].title == "" and not rows[2].installed and rows[2].size_bytes is None and rows[2].cpu_seconds is None
    assert [row.id for row in server_model_rows(SERVER_MODELS, "segmentation", installed_only=True)] == [
        "deepbet-brain-extraction"]
    assert [row.id for row in server_model_rows(SERVER_MODELS, "segmentation", search="SKULL")] == [
        "deepbet-brain-extraction"]
    assert [row.id for row in server_model_rows(SERVER_MODELS, "segmentation", search="CT ")] == ["spleen-ct"]
    assert [row.id for row in server_model_rows(SERVER_MODELS, "classification")] == ["mri-classifier"]


def test_on_this_computer_the_list_is_the_local_library():
    assert model_rows_for("segmentation") == library_rows("segmentation")
    assert model_rows_for("segmentation", "brain", True) == library_rows("segmentation", "brain", True)


class StubServer:
    """GET /v1/models of a MedDL server on loopback, for one key; counts the requests."""

    def __init__(self) -> None:
        stub = self
        self.requests = 0
        self.models = SERVER_MODELS

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                stub.requests += 1
                if self.headers.get("Authorization") != f"Bearer {KEY}":
                    self._answer(401, {"detail": "unknown API key"})
                elif self.path == "/v1/models":
                    self._answer(200, {"models": stub.models})
                else:
                    self._answer(404, {"detail": "not found"})

            def _answer(self, status, payload):
                body = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def stub_server():
    server = StubServer()
    yield server
    server.stop()


def closed_port_url() -> str:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}"


def test_check_connection_counts_the_servers_models(stub_server):
    assert check_connection(stub_server.url + "/", KEY) == f"connected: {len(SERVER_MODELS)} models"


def test_check_connection_uses_the_saved_key_only_for_the_saved_server(stub_server):
    use_server(stub_server.url, KEY)
    assert check_connection(stub_server.url, "").startswith("connected: ")
    with pytest.raises(ValueError, match="enter the API key"):
        check_connection(closed_port_url(), "")


def test_check_connection_says_why_not_without_the_key(stub_server):
    with pytest.raises(MeddlError, match="refused the API key") as error:
        check_connection(stub_server.url, "wrong-key")
    assert "wrong-key" not in str(error.value)
    with pytest.raises(MeddlError, match="cannot reach the MedDL server") as error:
        check_connection(closed_port_url(), KEY)
    assert KEY not in str(error.value)
    with pytest.raises(ValueError, match="query"):
        check_connection(stub_server.url + "?key=" + KEY, KEY)


def test_on_a_server_the_list_is_the_servers_asked_once(stub_server):
    use_server(stub_server.url, KEY)
    rows = model_rows_for("segmentation")
    assert [(row.id, row.title) for row in rows][:2] == [("deepbet-brain-extraction", "Brain extraction (deepbet)"),
                                                         ("spleen-ct", "Spleen")]
    assert [row.id for row in model_rows_for("segmentation", "spleen")] == ["spleen-ct"]
    assert [row.id for row in model_rows_for("classification", installed_only=True)] == ["mri-classifier"]
    assert stub_server.requests == 1  # typing in the search box asks the server nothing
    stub_server.models = SERVER_MODELS[:1]
    assert len(model_rows_for("segmentation")) == 3
    forget_server_models()  # after Save, Test connection
    assert [row.id for row in model_rows_for("segmentation")] == ["deepbet-brain-extraction"]
    assert stub_server.requests == 2
    check_connection(stub_server.url, KEY)  # a test asks again
    assert stub_server.requests == 3


def test_a_server_that_cannot_be_reached_lists_nothing_local():
    use_server(closed_port_url(), KEY)
    for _ in range(2):  # the failure is kept: a list filled as the user types does not wait each time
        with pytest.raises(MeddlError, match="cannot reach the MedDL server"):
            model_rows_for("segmentation")
    with pytest.raises(ValueError, match="this computer"):
        server_models(Compute())
