"""The model library: downloads from a loopback server (progress, resume, checksum, cancel), imports, removal."""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import torch
from loopback_files import FileServer
from meddl.cli import main
from meddl.errors import ModelError
from meddl.image import Image
from meddl.library import download, install
from meddl.library.download import Cancelled
from meddl.library.overview import model_rows
from meddl.models import catalog, store
from meddl.models.loading import load_model
from meddl.segmentation.predict import segment
from meddl_testing import card_dict, tiny_unet, write_bundle, write_state_dict_model, write_torchscript_model

ROOT = Path(__file__).resolve().parents[3]
ZOO_EXPRESSIONS = {"bundle_root": ".", "ckpt_path": "$@bundle_root + '/models/model.pt'"}


ZOO_PATH = "/test_bundle_v0.1.0.zip"  # where MEDDL_MODEL_ZOO_URL points for the catalog entry below


def _serve(payload: bytes, drop_first: bool = False) -> FileServer:
    """`payload` served as the test bundle's zip (and as /model.zip); `drop_first` breaks its first transfer."""
    server = FileServer({ZOO_PATH: payload, "/model.zip": payload})
    server.drop = ZOO_PATH if drop_first else None
    return server


def _zoo_zip(tmp_path: Path, expressions: bool = True) -> bytes:
    """A Model-Zoo-format bundle zip (top folder, configs, models/model.pt)."""
    write_bundle(tmp_path / "zoo" / "test_bundle", ZOO_EXPRESSIONS if expressions else None)
    archive = tmp_path / "test_bundle_v0.1.0.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        for path in (tmp_path / "zoo").rglob("*"):
            bundle.write(path, path.relative_to(tmp_path / "zoo"))
    return archive.read_bytes()


@pytest.fixture
def zoo_entry(monkeypatch):
    """A catalog entry naming a Zoo bundle by name and version, served from loopback."""

    def add(server: FileServer, payload: bytes, sha256: str | None = None) -> str:
        monkeypatch.setenv("MEDDL_MODEL_ZOO_URL", server.base + "/{name}_v{version}.zip")
        entry = {"id": "zoo-test", "title": "Test bundle", "task": "segmentation", "license": "Apache-2.0",
                 "source": {"monai_zoo": {"name": "test_bundle", "version": "0.1.0"},
                            "checksum": {"algorithm": "sha256",
                                         "value": sha256 or hashlib.sha256(payload).hexdigest()}}}
        monkeypatch.setitem(catalog._entries(), "zoo-test", entry)
        return "zoo-test"

    return add


def _nothing_left() -> bool:
    root = store.models_dir()
    leftovers = [p for p in root.iterdir() if p.name != ".downloads"] if root.exists() else []
    return not leftovers and not store.list_installed()


def test_catalog_matches_its_schema():
    schema = json.loads((ROOT / "Resources/Schemas/meddl-model-catalog.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate(json.loads(catalog.CATALOG.read_text()), schema)


def test_schema_rejects_a_zoo_entry_without_checksum():
    schema = json.loads((ROOT / "Resources/Schemas/meddl-model-catalog.schema.json").read_text())
    bad = {"version": 1, "models": [{"id": "x", "title": "x", "task": "segmentation", "license": "MIT",
                                     "source": {"monai_zoo": {"name": "x", "version": "0.1.0"}}}]}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


def test_a_download_without_published_checksum_is_pinned_by_its_first_copy(tmp_path, monkeypatch):
    """The installer says there is no checksum, records the first copy's SHA-256, and refuses a changed one."""
    first, changed = _zoo_zip(tmp_path), None
    (tmp_path / "again").mkdir()
    changed = _zoo_zip(tmp_path / "again", expressions=False)
    assert first != changed
    server = _serve(first)
    entry = {"id": "tofu-test", "title": "Test", "task": "segmentation", "license": "MIT",
             "source": {"url": f"{server.base}/model.zip"}}
    monkeypatch.setitem(catalog._entries(), "tofu-test", entry)
    for payload, expected in ((first, None), (first, None), (changed, "differs from the copy first installed")):
        server.files["/model.zip"] = payload
        messages: list[str] = []
        report = messages.append
        if expected:
            with pytest.raises(ModelError, match=expected):
                install.install("tofu-test", lambda f, m, report=report: report(m), trust=True)
            assert not (store.models_dir() / "tofu-test").exists()
        else:
            installed = install.install("tofu-test", lambda f, m, report=report: report(m), trust=True)
            assert installed.record["checksum"]["value"] == hashlib.sha256(payload).hexdigest()
            store.remove("tofu-test")
        assert "no checksum from the publisher" in messages[0]


def test_install_zoo_bundle_with_progress_then_run_it(tmp_path, zoo_entry, monkeypatch):
    monkeypatch.setattr(download, "CHUNK", 4096)  # several progress reports for a small test bundle
    payload = _zoo_zip(tmp_path)
    model_id = zoo_entry(_serve(payload), payload)
    reports = []
    installed = install.install(model_id, lambda f, m: reports.append(f), trust=True)
    assert reports[-1] == 1.0 and len([f for f in reports if 0 < f < 0.8]) >= 3
    assert catalog.is_installed(model_id) and installed.trusted
    assert not (store.models_dir() / ".downloads" / f"{model_id}.zip").exists()
    labels = segment(Image(np.random.default_rng(0).random((16, 16, 16)).astype(np.float32) * 100), model_id,
                     device="cpu").labels
    assert [label.name for label in load_model(model_id).card.labels] == ["grey matter", "white matter"]
    assert labels.array.shape == (16, 16, 16)


def test_untrusted_zoo_bundle_is_refused_and_nothing_installed(tmp_path, zoo_entry):
    payload = _zoo_zip(tmp_path)
    model_id = zoo_entry(_serve(payload), payload)
    with pytest.raises(ModelError, match="executable expressions.*trust"):
        install.install(model_id)
    assert _nothing_left()


def test_interrupted_download_resumes(tmp_path, zoo_entry):
    payload = _zoo_zip(tmp_path)
    server = _serve(payload, drop_first=True)
    model_id = zoo_entry(server, payload)
    with pytest.raises(ModelError, match="interrupted|failed"):
        install.install(model_id, trust=True)
    assert _nothing_left()
    install.install(model_id, trust=True)
    ranges = [byte_range for _, byte_range in server.requests]
    assert ranges[0] is None and ranges[1].startswith("bytes=") and ranges[1] != "bytes=0-"
    assert catalog.is_installed(model_id)


def test_checksum_mismatch_installs_nothing(tmp_path, zoo_entry):
    payload = _zoo_zip(tmp_path)
    model_id = zoo_entry(_serve(payload), payload, sha256="0" * 64)
    with pytest.raises(ModelError, match="checksum mismatch"):
        install.install(model_id, trust=True)
    assert _nothing_left() and not list((store.models_dir() / ".downloads").iterdir())


def test_cancelled_download_installs_nothing(tmp_path, zoo_entry):
    payload = _zoo_zip(tmp_path)
    model_id = zoo_entry(_serve(payload), payload)
    with pytest.raises(Cancelled):
        install.install(model_id, should_stop=lambda: True, trust=True)
    assert _nothing_left()


def test_import_state_dict_with_complete_card(tmp_path):
    installed = install.import_model(write_state_dict_model(tmp_path))
    assert installed.id == "test-unet" and store.installed("test-unet")


def test_import_torchscript_without_card_needs_the_form(tmp_path):
    path = write_torchscript_model(tmp_path)
    path.with_suffix(".json").unlink()
    with pytest.raises(ModelError, match="missing task, input.channels, labels, license"):
        install.import_model(path)
    assert _nothing_left()
    fields = {"name": "scripted", "task": "segmentation", "license": "MIT", "input": {"channels": 1},
              "labels": [{"value": 1, "name": "Organ"}], "inference": {"roi_size": [16, 16, 16]}}
    installed = install.import_model(path, card_fields=fields)
    assert installed.id == "scripted"
    assert json.loads((installed.folder / "model.json").read_text())["labels"][0]["name"] == "Organ"


@pytest.mark.parametrize("as_zip", [False, True])
def test_import_bundle_folder_or_zip(tmp_path, as_zip):
    write_bundle(tmp_path / "my_bundle")
    source = tmp_path / "my_bundle"
    if as_zip:
        source = tmp_path / "my_bundle.zip"
        with zipfile.ZipFile(source, "w") as archive:
            for path in (tmp_path / "my_bundle").rglob("*"):
                archive.write(path, Path("my_bundle") / path.relative_to(tmp_path / "my_bundle"))
    install.import_model(source, "bundle-import")
    assert [row.id for row in model_rows(installed=True)].count("bundle-import") == 1


def test_import_refuses_a_model_that_does_not_run(tmp_path):
    path = write_state_dict_model(tmp_path)
    card = card_dict()
    card["labels"] = [{"value": v, "name": f"L{v}"} for v in (1, 2, 3)]  # 4 channels wanted, network gives 2
    (tmp_path / "model.json").write_text(json.dumps(card))
    with pytest.raises(ModelError, match="output channel"):
        install.import_model(path)
    assert _nothing_left()


def test_remove_frees_the_space(tmp_path):
    installed = install.import_model(write_state_dict_model(tmp_path))
    size = store.folder_size(installed.folder)
    assert size > 0 and store.remove(installed.id) == size
    assert not installed.folder.exists() and store.installed(installed.id) is None
    with pytest.raises(ModelError, match="not installed"):
        store.remove(installed.id)


def test_overview_filters():
    assert {row.id for row in model_rows(task="segmentation")} >= {"deepbet-brain-extraction"}
    assert [row.id for row in model_rows(search="spleen organ")] == ["monai-zoo-spleen-deepedit-annotation"]
    assert {"monai-zoo-spleen-ct-segmentation", "monai-zoo-spleen-deepedit-annotation"} <= \
        {row.id for row in model_rows(search="spleen")}
    assert [row.id for row in model_rows(modality="MR", body_part="brain")] == [
        "monai-zoo-brats-mri-segmentation",
        "monai-zoo-wholebrainseg-large-unest-segmentation", "hd-bet-2-brain-extraction"]
    assert "monai-zoo-spleen-ct-segmentation" not in {row.id for row in model_rows(installed=True)}
    deepbet = next(row for row in model_rows() if row.id == "deepbet-brain-extraction")
    assert deepbet.installed and deepbet.size_bytes > 10_000_000 and "Dice 0.939" in deepbet.accuracy


def test_cli_import_list_remove(tmp_path, capsys):
    path = write_torchscript_model(tmp_path)
    path.with_suffix(".json").unlink()
    assert main(["models", "import", str(path), "--id", "cli-model", "--task", "segmentation", "--channels", "1",
                 "--labels", "1:Liver,2:Spleen", "--license", "MIT", "--roi", "16,16,16"]) == 4  # 2 labels, 2 channels
    assert main(["models", "import", str(path), "--id", "cli-model", "--task", "segmentation", "--channels", "1",
                 "--labels", "1:Liver", "--license", "MIT", "--roi", "16,16,16"]) == 0
    assert main(["models", "list", "--installed"]) == 0
    assert "cli-model" in capsys.readouterr().out
    assert main(["models", "remove", "cli-model"]) == 0
    assert "MB freed" in capsys.readouterr().out
    assert main(["models", "install", "deepbet-brain-extraction"]) == 4  # comes with its Python package


def test_unsafe_zip_is_refused(tmp_path):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr("../escape.txt", "x")
    with pytest.raises(ModelError, match="unsafe path"):
        install.import_model(archive, "evil")
    assert _nothing_left() and not (tmp_path.parent / "escape.txt").exists()


def test_untouched_network_weights(tmp_path):
    """An imported model computes exactly what the original file computes."""
    path = write_state_dict_model(tmp_path)
    installed = install.import_model(path)
    loaded = torch.load(installed.model_path, weights_only=True)
    for key, value in tiny_unet().state_dict().items():
        assert torch.equal(loaded[key], value)


def test_leftovers_of_a_killed_install_are_cleaned(tmp_path):
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = dead.stdout.strip()
    # an install, and a training killed while it rewrote its checkpoint (files.staged_folder's names)
    stale = [store.models_dir() / name for name in (f".staging-test-unet-{pid}", f".liver.partial-{pid}",
                                                     f".liver.old-{pid}")]
    for folder in stale:
        folder.mkdir(parents=True)
        (folder / "half.bin").write_bytes(b"x" * 100)
    alive = store.models_dir() / f".liver.partial-{os.getpid()}"  # a training still running here
    alive.mkdir()
    install.import_model(write_state_dict_model(tmp_path))
    assert not any(folder.exists() for folder in stale) and alive.is_dir()
    assert [m.id for m in store.list_installed()] == ["test-unet"]


def test_a_trained_classifier_imports_and_is_listed_for_its_task(tmp_path):
    from meddl.classification.training import TrainingSettings, train_classifier

    rng = np.random.default_rng(0)
    images = [Image(rng.normal(label, 1.0, (16, 16, 16)).astype(np.float32)) for label in (0, 1) * 4]
    result = train_classifier(images, [0, 1] * 4, ["low", "high"], tmp_path / "tissue", TrainingSettings(epochs=1))
    installed = install.import_model(result.folder / "model.pt", "tissue-classifier")
    assert installed.id == "tissue-classifier"
    assert [row.id for row in model_rows(task="classification")] == ["tissue-classifier"]
