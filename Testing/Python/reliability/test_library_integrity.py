"""The model library stays trustworthy: ids that follow their install, reserved catalog ids, checksums of every
file, broken entries that are listed and removable, bounded archives, terminal-safe text, honest messages
about pickles (issue 16, defects 1, 2, 6, 8 and part of 13)."""

from __future__ import annotations

import io
import json
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from meddl.cli import main
from meddl.cli.worker import serve
from meddl.errors import ModelError
from meddl.io import write_image
from meddl.library import install
from meddl.library.overview import model_rows
from meddl.models import loading, store
from meddl.models.loading import load_model
from meddl_testing import blob_image, card_dict, write_bundle, write_state_dict_model, write_torchscript_model

ZOO_ID = "monai-zoo-spleen-ct-segmentation"  # a catalog entry that is downloaded into the library
PACKAGE_ID = "deepbet-brain-extraction"  # a catalog entry whose weights come with a Python package


def _model(tmp_path: Path, name: str, labels: int = 1, torchscript: bool = False) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    path = write_torchscript_model(folder, labels) if torchscript else write_state_dict_model(folder, labels)
    card = json.loads(path.with_suffix(".json").read_text())
    path.with_suffix(".json").write_text(json.dumps({**card, "name": name}))
    return path


def _zip_bundle(tmp_path: Path, name: str) -> Path:
    write_bundle(tmp_path / "src" / name)
    archive = tmp_path / f"{name}.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as bundle:
        for path in (tmp_path / "src" / name).rglob("*"):
            bundle.write(path, Path(name) / path.relative_to(tmp_path / "src" / name))
    return archive


def _nothing_staged() -> bool:
    root = store.models_dir()
    return not root.exists() or not [p for p in root.iterdir() if p.name.startswith(".") and p.name != ".downloads"]


@pytest.fixture
def model_cache():
    loading.set_model_cache_size(2)
    yield
    loading.set_model_cache_size(0)


# -- defect 1: the worker's model cache follows what a library id names ------------------------------------------

def test_cache_follows_removal_and_reimport(tmp_path, model_cache):
    install.import_model(_model(tmp_path, "one", labels=1), "same-id")
    assert len(load_model("same-id").card.labels) == 1
    store.remove("same-id")
    with pytest.raises(ModelError, match="model not found"):
        load_model("same-id")
    install.import_model(_model(tmp_path, "two", labels=2), "same-id")
    assert len(load_model("same-id").card.labels) == 2


def test_worker_stops_running_a_removed_model_and_runs_its_replacement(tmp_path):
    image = write_image(blob_image(shape=(12, 12, 12)), tmp_path / "image.nrrd")
    first, second = _model(tmp_path, "first", labels=1), _model(tmp_path, "second", labels=2)

    def segment(name: str) -> list[str]:
        return ["segment", str(image), str(tmp_path / f"{name}.nrrd"), "--model", "lib-model", "--device", "cpu"]

    lines = [{"job": "import1", "argv": ["models", "import", str(first), "--id", "lib-model"]},
             {"job": "run1", "argv": segment("run1")},
             {"job": "remove", "argv": ["models", "remove", "lib-model"]},
             {"job": "gone", "argv": segment("gone")},
             {"job": "import2", "argv": ["models", "import", str(second), "--id", "lib-model"]},
             {"job": "run2", "argv": segment("run2")}]
    out = io.StringIO()
    try:
        serve(io.StringIO("".join(json.dumps(line) + "\n" for line in lines)), out)
    finally:
        loading.set_model_cache_size(0)
    finals = {e["job"]: e for e in map(json.loads, out.getvalue().splitlines()) if e["event"] in ("done", "error")}
    assert [finals[job]["event"] for job in ("import1", "run1", "remove", "import2", "run2")] == ["done"] * 5
    assert finals["gone"]["event"] == "error" and finals["gone"]["exit_code"] == 4
    assert "not found" in finals["gone"]["message"] and not (tmp_path / "gone.nrrd").exists()
    names = {job: [label["name"] for label in json.loads(Path(finals[job]["label_table"]).read_text())["labels"]]
             for job in ("run1", "run2")}
    assert names == {"run1": ["Label 1"], "run2": ["Label 1", "Label 2"]}


# -- defect 2: catalog ids are reserved ----------------------------------------------------------------------------

@pytest.mark.parametrize("how", ["file name", "--id", "card name", "other case"])
def test_import_cannot_take_a_catalog_id(tmp_path, capsys, how):
    if how == "file name":
        argv = ["models", "import", str(_zip_bundle(tmp_path, PACKAGE_ID))]
    elif how == "card name":
        argv = ["models", "import", str(_model(tmp_path, PACKAGE_ID))]
    else:
        model_id = PACKAGE_ID if how == "--id" else ZOO_ID.upper()
        argv = ["models", "import", str(_model(tmp_path, "mine")), "--id", model_id]
    assert main(argv) == 4
    err = capsys.readouterr().err
    assert "reserved" in err and "--id" in err
    assert store.list_installed() == [] and _nothing_staged()
    assert load_model(PACKAGE_ID).source == f"catalog:{PACKAGE_ID}"


def test_training_into_the_library_cannot_take_a_catalog_id(tmp_path, capsys):
    image = write_image(blob_image(shape=(12, 12, 12)), tmp_path / "image.nii.gz")
    assert main(["train", "--images", str(image), "--labels", str(image), "--label-names", "1:Blob",
                 "--install-as", PACKAGE_ID, "--epochs", "1", "--progress", "none"]) == 4
    assert "reserved" in capsys.readouterr().err and store.list_installed() == []


def test_a_library_folder_named_like_a_catalog_entry_does_not_shadow_it(tmp_path, capsys):
    """As an import from before ids were reserved would have left it."""
    for model_id in (PACKAGE_ID, ZOO_ID):
        imported = install.import_model(_model(tmp_path, f"stand-in-{model_id}"), f"stand-in-{model_id}")
        os.replace(imported.folder, store.models_dir() / model_id)
    assert load_model(PACKAGE_ID).source == f"catalog:{PACKAGE_ID}"
    with pytest.raises(ModelError, match="not installed"):
        load_model(ZOO_ID)
    zoo = next(row for row in model_rows() if row.id == ZOO_ID)
    assert not zoo.installed and "not installed from the catalog" in zoo.broken
    assert main(["models", "install", ZOO_ID]) == 4 and "remove" in capsys.readouterr().err
    assert main(["models", "remove", ZOO_ID]) == 0 and main(["models", "remove", PACKAGE_ID]) == 0


# -- defect 6: checksums of every file ------------------------------------------------------------------------------

@pytest.mark.parametrize("torchscript", [False, True])
def test_damaged_weights_are_detected(tmp_path, torchscript):
    installed = install.import_model(_model(tmp_path, "weights", torchscript=torchscript))
    files = installed.record["files"]
    assert set(files) == {installed.record["model_path"], "model.json"}
    assert all(len(digest) == 64 for digest in files.values())
    assert json.loads((installed.folder / store.RECORD).read_text())["files"] == files
    load_model("weights")
    data = bytearray(installed.model_path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte, same size
    installed.model_path.write_bytes(bytes(data))
    with pytest.raises(ModelError, match=r"'weights' is damaged.*meddl models remove weights"):
        load_model("weights")
    assert main(["segment", "in.nii.gz", "out.nii.gz", "--model", "weights"]) in (3, 4)  # no traceback either way


def test_a_missing_file_is_damage_and_a_bundle_is_checked_too(tmp_path):
    archive = _zip_bundle(tmp_path, "zipped")
    installed = install.import_model(archive, "zipped")
    assert any(name.endswith("models/model.pt") for name in installed.record["files"])
    next(installed.folder.rglob("inference.json")).unlink()
    with pytest.raises(ModelError, match="inference.json is missing"):
        load_model("zipped")


def test_records_without_checksums_still_load(tmp_path):
    installed = install.import_model(_model(tmp_path, "legacy"))
    record = {key: value for key, value in installed.record.items() if key != "files"}
    (installed.folder / store.RECORD).write_text(json.dumps(record))
    assert load_model("legacy").card.name == "legacy"


def test_files_are_hashed_once_per_process(tmp_path, monkeypatch):
    install.import_model(_model(tmp_path, "hashed"))
    hashed = []
    original = store.sha256_of
    monkeypatch.setattr(store, "sha256_of", lambda path: hashed.append(path) or original(path))
    load_model("hashed")
    load_model("hashed")
    assert len(hashed) == 2  # model.pt and model.json, once each


# -- defect 8: one broken entry does not break the library --------------------------------------------------------

BROKEN_RECORDS = {"invalid JSON": "{not json", "not an object": "[1, 2]", "missing keys": "{}",
                  "path outside": json.dumps({"kind": "import", "model_path": "../../elsewhere"}),
                  "no record": None}


@pytest.mark.parametrize("problem", sorted(BROKEN_RECORDS))
def test_a_broken_record_is_listed_and_removable(tmp_path, capsys, problem):
    install.import_model(_model(tmp_path, "good"))
    broken = install.import_model(_model(tmp_path, "bad")).folder
    if BROKEN_RECORDS[problem] is None:
        (broken / store.RECORD).unlink()
    else:
        (broken / store.RECORD).write_text(BROKEN_RECORDS[problem])
    capsys.readouterr()
    assert main(["models", "list"]) == 0
    listed = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert " installed " in listed["good"] and " broken " in listed["bad"] and "models remove bad" in listed["bad"]
    assert main(["models", "list", "--json"]) == 0
    rows = {row["id"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["bad"]["broken"] and not rows["bad"]["installed"] and not rows["good"]["broken"]
    assert main(["models", "info", "good"]) == 0 and json.loads(capsys.readouterr().out)["installed"]
    assert main(["models", "info", "bad"]) == 0 and json.loads(capsys.readouterr().out)["broken"]
    with pytest.raises(ModelError, match="not found" if problem == "no record" else "broken"):
        load_model("bad")
    assert main(["models", "import", str(_model(tmp_path, "again")), "--id", "bad"]) == 4
    assert main(["models", "remove", "bad"]) == 0 and not broken.exists()
    assert [model.id for model in store.list_installed()] == ["good"]


@pytest.mark.parametrize("card", ["{not json", "[]", json.dumps({"title": ["x"], "input": 3, "accuracy": 5})])
def test_a_broken_card_does_not_break_the_list(tmp_path, capsys, card):
    installed = install.import_model(_model(tmp_path, "carded"))
    installed.model_path.with_suffix(".json").write_text(card)
    assert main(["models", "list"]) == 0 and "carded" in capsys.readouterr().out
    assert main(["models", "info", "carded"]) == 0
    assert main(["models", "remove", "carded"]) == 0


def test_an_unreadable_card_beside_an_import_is_a_model_error(tmp_path, capsys):
    path = _model(tmp_path, "cardless")
    path.with_suffix(".json").write_text("{broken")
    assert main(["models", "import", str(path)]) == 4
    assert "not readable JSON" in capsys.readouterr().err and _nothing_staged()


# -- defect 13: archives, terminals, stale folders, pickles ------------------------------------------------------

def test_a_zip_bomb_member_is_refused_before_extraction(tmp_path):
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as bundle:
        bundle.writestr("b/configs/metadata.json", "{}")
        bundle.writestr("b/models/model.pt", bytes(40 * 2**20))  # 40 MB of zeros in about 40 kB
    with pytest.raises(ModelError, match="inflates more than"):
        install.import_model(archive, "bomb")
    assert _nothing_staged() and store.list_installed() == []


def test_the_unpacked_total_is_bounded(tmp_path, monkeypatch):
    archive = _zip_bundle(tmp_path, "bounded")
    monkeypatch.setenv("MEDDL_MAX_UNPACKED_BYTES", "1000")
    with pytest.raises(ModelError, match="unpacks to more than"):
        install.import_model(archive, "bounded")
    assert _nothing_staged()
    monkeypatch.setenv("MEDDL_MAX_UNPACKED_BYTES", "lots")
    with pytest.raises(ModelError, match="MEDDL_MAX_UNPACKED_BYTES"):
        install.import_model(archive, "bounded")
    monkeypatch.delenv("MEDDL_MAX_UNPACKED_BYTES")
    assert install.import_model(archive, "bounded").id == "bounded"


def test_a_header_that_understates_a_size_is_refused(tmp_path):
    archive = _zip_bundle(tmp_path, "liar")
    data = bytearray(archive.read_bytes())
    with zipfile.ZipFile(archive) as bundle:
        target = next(info for info in bundle.infolist() if info.filename.endswith("model.pt"))
    central = data.find(b"PK\x01\x02")
    while True:  # the central directory entry of model.pt: claim 10 bytes
        name_length = int.from_bytes(data[central + 28:central + 30], "little")
        if data[central + 46:central + 46 + name_length].decode() == target.filename:
            break
        central = data.find(b"PK\x01\x02", central + 4)
    data[central + 24:central + 28] = (10).to_bytes(4, "little")
    archive.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="larger than its zip header says|damaged"):
        install.import_model(archive, "liar")
    assert _nothing_staged() and store.list_installed() == []


def test_a_damaged_archive_is_a_model_error(tmp_path, capsys):
    archive = _zip_bundle(tmp_path, "torn")
    data = bytearray(archive.read_bytes())
    data[200:400] = bytes(200)
    archive.write_bytes(bytes(data))
    assert main(["models", "import", str(archive), "--id", "torn"]) == 4
    assert _nothing_staged()


def test_control_characters_never_reach_the_terminal(tmp_path, capsys):
    path = _model(tmp_path, "noisy")
    card = json.loads(path.with_suffix(".json").read_text())
    card.update(title="\x1b[2J\x1b]0;owned\x07Nice\u202etitle", description="two\nlines\x1b[31m",
                input={**card["input"], "modality": "MR\x1b[1m"})
    path.with_suffix(".json").write_text(json.dumps(card))
    install.import_model(path)
    capsys.readouterr()
    for argv in (["models", "list"], ["models", "list", "--json"], ["models", "info", "noisy"]):
        assert main(argv) == 0
        out = capsys.readouterr().out
        assert "noisy" in out and not any(ord(ch) < 32 and ch not in "\n" for ch in out)
        assert "\x7f" not in out and "\u202e" not in out and "\x9b" not in out
    assert main(["models", "list"]) == 0
    assert "[2J]0;ownedNicetitle" in capsys.readouterr().out


def test_every_library_command_cleans_a_killed_import(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    for argv in (["models", "list"], ["models", "info", PACKAGE_ID], ["models", "remove", "nothing-here"]):
        stale = store.models_dir() / f".staging-killed-{dead.stdout.strip()}"
        stale.mkdir(parents=True)
        (stale / "half.pt").write_bytes(b"x" * 100)
        main(argv)
        assert not stale.exists(), argv


class _Payload:
    """Pickled by reference to this module: loading it would import and build it."""


@pytest.mark.parametrize("content", ["random", "code"])
def test_only_a_real_pickle_is_said_to_run_code(tmp_path, content):
    path = write_state_dict_model(tmp_path)
    if content == "random":
        path.write_bytes(b"\x80" + os.urandom(4000))
    else:
        torch.save({"payload": _Payload()}, path)
    with pytest.raises(ModelError) as raised:
        load_model(path)
    message = str(raised.value)
    if content == "random":
        assert "not a PyTorch model file" in message and "run code" not in message
    else:
        assert "can run code" in message and "--trust-model" in message


def test_a_legacy_pickle_checkpoint_still_loads(tmp_path):
    path = write_state_dict_model(tmp_path)
    torch.save(torch.load(path, weights_only=True), path, _use_new_zipfile_serialization=False)
    assert path.read_bytes()[:1] == b"\x80"
    assert load_model(path).card.name == card_dict()["name"]


def test_a_plain_pickle_that_is_not_a_checkpoint(tmp_path):
    path = write_state_dict_model(tmp_path)
    path.write_bytes(pickle.dumps({"a": 1}, protocol=2))  # a pickle, but not torch.save's legacy layout
    with pytest.raises(ModelError, match="corrupt|not a PyTorch"):
        load_model(path)


def test_ids_that_would_clash_on_macos_or_windows_are_refused(tmp_path, capsys):
    model = _model(tmp_path, "mine")
    assert main(["models", "import", str(model), "--id", "mine"]) == 0
    for model_id in ("MINE", "mine.", f"{PACKAGE_ID}."):
        capsys.readouterr()
        assert main(["models", "import", str(model), "--id", model_id]) == 4, model_id
