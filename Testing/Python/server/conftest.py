"""A real MedDL server on loopback: uvicorn in a thread (port 0), a temporary keys file, work folder and model
library holding the band model (`write_band_model`, imported as "bands")."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from meddl.image import Image  # noqa: E402
from meddl.io import write_image  # noqa: E402
from meddl.server import keys  # noqa: E402
from meddl.server.app import create_app, uvicorn_server  # noqa: E402
from meddl.server.settings import ServerSettings, models_folder  # noqa: E402
from meddl_testing import band_volume, write_band_model  # noqa: E402

MODEL_ID = "bands"


class RunningServer:
    """One app served by uvicorn in a thread on 127.0.0.1, stopped with `stop()` (as Ctrl+C would)."""

    def __init__(self, settings: ServerSettings, **options) -> None:
        self.settings = settings
        self.app = create_app(settings)
        self.server = uvicorn_server(self.app, host="127.0.0.1", port=0, log_level="warning", lifespan="on",
                                     timeout_graceful_shutdown=1, **options)
        self.thread = threading.Thread(target=self.server.run, daemon=True, name="test-uvicorn")
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"{'https' if options.get('ssl_certfile') else 'http'}://127.0.0.1:{self.port}"

    @property
    def state(self):
        """The app's Server object (work folder, uploads, jobs)."""
        return self.app.state.meddl

    def stop(self) -> None:
        if self.thread.is_alive():
            self.server.should_exit = True
            self.thread.join(timeout=60)


@pytest.fixture(scope="session")
def library(tmp_path_factory) -> Path:
    """A model library with the band model imported as "bands"; also the model's own files (for local runs)."""
    from meddl.library import install

    root = tmp_path_factory.mktemp("server-library")
    (root / "source").mkdir()
    model = write_band_model(root / "source")
    with models_folder(root / "models"):
        install.import_model(model, MODEL_ID)
    return root


@pytest.fixture(scope="session")
def model_id() -> str:
    """The id of the band model in the server's library."""
    return MODEL_ID


@pytest.fixture(scope="session")
def band_model_file(library) -> Path:
    return library / "source" / "bands.ts"


@pytest.fixture(scope="session")
def keys_file(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A keys file with the keys of alice and bob (name -> key)."""
    path = tmp_path_factory.mktemp("server-keys") / "keys.txt"
    return path, {name: keys.add_key(name, path) for name in ("alice", "bob")}


@pytest.fixture(scope="session")
def base_settings(library, keys_file, tmp_path_factory) -> ServerSettings:
    return ServerSettings(key_file=keys_file[0], work_dir=tmp_path_factory.mktemp("server-work") / "work",
                          models_dir=library / "models", max_upload_mb=1.0, max_jobs_per_key=4, workers=2,
                          allow_model_uploads=True)


@pytest.fixture(scope="session")
def server(base_settings):
    """The shared server: 2 workers, model uploads allowed, uploads up to 1 MB, 4 jobs per key."""
    running = RunningServer(base_settings)
    yield running
    running.stop()


@pytest.fixture
def start_server(base_settings, tmp_path):
    """Start further servers (settings changed by keyword); each is stopped at the end of the test."""
    started: list[RunningServer] = []

    def start(uvicorn_options: dict | None = None, **changes) -> RunningServer:
        changes.setdefault("work_dir", tmp_path / f"work{len(started)}")
        started.append(RunningServer(replace(base_settings, **changes), **(uvicorn_options or {})))
        return started[-1]

    yield start
    for running in started:
        running.stop()


@pytest.fixture(scope="session")
def alice(keys_file) -> str:
    return keys_file[1]["alice"]


@pytest.fixture(scope="session")
def bob(keys_file) -> str:
    return keys_file[1]["bob"]


@pytest.fixture(scope="session")
def band_image(tmp_path_factory) -> Path:
    """A volume whose band-model segmentation is exactly its integer values (anisotropic, off-origin)."""
    path = tmp_path_factory.mktemp("server-images") / "bands.nii.gz"
    write_image(Image(band_volume(), (1.0, 1.5, 2.0), (4.0, -3.0, 2.5)), path)
    return path


@pytest.fixture(scope="session")
def noisy_image(tmp_path_factory) -> Path:
    """A small noisy volume: `enhance --method network --steps 100000` on it runs for minutes (a slow job)."""
    path = tmp_path_factory.mktemp("server-noisy") / "noisy.nii.gz"
    write_image(Image((np.random.default_rng(0).random((16, 16, 16)) * 100).astype(np.float32)), path)
    return path


def _wait_for(condition, timeout: float = 30.0, interval: float = 0.05):
    """Poll `condition` until it returns something true; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {getattr(condition, '__name__', condition)}")
        time.sleep(interval)


@pytest.fixture(scope="session")
def wait_for():
    return _wait_for


@pytest.fixture(scope="session")
def case(tmp_path_factory) -> dict:
    """The promptable case of `interactive_case.build_case` (a random-weights nnInteractive model, two volumes, prompt
    histories and the labels `meddl interact` gives locally), built once."""
    pytest.importorskip("nnInteractive.inference.inference_session")
    import interactive_case

    return interactive_case.build_case(tmp_path_factory.mktemp("interactive-sessions"))
