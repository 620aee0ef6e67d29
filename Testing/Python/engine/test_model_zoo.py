"""The MONAI Model Zoo in the catalog: every entry valid and runnable by a MedDL command, taken from the Zoo's index."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path

import jsonschema
import pytest
from loopback_files import FileServer
from meddl.cli.parser import build_parser
from meddl.errors import ModelError
from meddl.library import hosting, install
from meddl.models import catalog, store
from meddl.models.bundle_workflow import TASK_OUTPUTS
from meddl.models.loading import load_model
from meddl.tasks import get_task
from meddl_testing import write_bundle

ROOT = Path(__file__).resolve().parents[3]
SCHEMA = ROOT / "Resources" / "Schemas" / "meddl-model-catalog.schema.json"
ZOO_IDS = [model_id for model_id in catalog.entry_ids() if "monai_zoo" in catalog.get_entry(model_id)["source"]]


def _validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@pytest.mark.parametrize("model_id", catalog.entry_ids())
def test_every_entry_matches_the_schema_and_has_a_meddl_command(model_id):
    entry = catalog.get_entry(model_id)
    _validator().validate({"version": 1, "models": [entry]})
    argv = catalog.run_command(model_id)
    args = build_parser().parse_args(argv)  # the command line accepts it as it stands
    assert args.command in get_task(entry["task"]).commands_module().RUNNERS
    assert args.model == model_id


@pytest.mark.parametrize("model_id", ZOO_IDS)
def test_zoo_entries_are_complete(model_id):
    entry = catalog.get_entry(model_id)
    for field in ("title", "task", "modality", "body_part", "license", "description"):
        assert entry.get(field), f"{model_id}: {field}"
    assert "size_bytes" in entry and (entry["size_bytes"] is None or entry["size_bytes"] > 0)
    zoo, checksum = entry["source"]["monai_zoo"], entry["source"]["checksum"]
    assert zoo["hosting"] == "ngc" and checksum["algorithm"] == "sha1" and len(checksum["value"]) == 40
    assert entry["task"] in TASK_OUTPUTS  # MONAI's bundle workflow runs it and MedDL maps its outputs


def test_the_zoo_bundles_catalogued():
    names = {catalog.get_entry(model_id)["source"]["monai_zoo"]["name"] for model_id in ZOO_IDS}
    assert {"spleen_ct_segmentation", "wholeBody_ct_segmentation", "swin_unetr_btcv_segmentation",
            "brats_mri_segmentation", "pancreas_ct_dints_segmentation", "prostate_mri_anatomy",
            "wholeBrainSeg_Large_UNEST_segmentation"} <= names
    assert len(names) == len(ZOO_IDS) == 13
    spleen = catalog.get_entry("monai-zoo-spleen-ct-segmentation")["source"]  # the id users know is kept
    assert spleen["monai_zoo"]["version"] == "0.5.9"
    assert spleen["checksum"]["value"] == "8e99230050906d0d3cec484010598aa138201892"  # the Zoo index's SHA-1


def test_multi_channel_entries_ask_for_their_channels_in_order():
    argv = catalog.run_command("monai-zoo-brats-mri-segmentation")
    assert argv[:3] == ["segment", "T1C", "LABELS.nii.gz"] and argv[-4:] == ["--more-inputs", "T1", "T2", "FLAIR"]


def test_every_left_out_zoo_bundle_is_documented():
    zoo_doc = (ROOT / "docs" / "MODEL_ZOO.md").read_text()
    for left_out in ("breast_density_classification", "mednist_reg", "renalStructures_CECT_segmentation",
                     "lung_nodule_ct_detection", "pathology_tumor_detection", "maisi_ct_generative",
                     "endoscopic_inbody_classification", "vista2d", "valve_landmarks"):
        assert left_out in zoo_doc
    for model_id in ZOO_IDS:
        assert catalog.get_entry(model_id)["source"]["monai_zoo"]["name"] in zoo_doc


def test_schema_accepts_huggingface_hosting_without_an_archive_checksum():
    entry = {"id": "x", "title": "x", "task": "segmentation", "license": "MIT",
             "source": {"monai_zoo": {"name": "x", "version": "0.1.0", "hosting": "huggingface"}}}
    _validator().validate({"version": 1, "models": [entry]})
    entry["source"]["monai_zoo"]["hosting"] = "ngc"
    with pytest.raises(jsonschema.ValidationError):
        _validator().validate({"version": 1, "models": [entry]})


# -- hosting: NGC zips and the Hugging Face layout, on a loopback server -------------------------------------------

def _bundle_files(tmp_path: Path) -> dict[str, bytes]:
    """A small bundle in the Zoo's layout (no executable expressions), as {relative path: content}."""
    folder = tmp_path / "made" / "Zoo_Bundle"
    write_bundle(folder)
    (folder / "LICENSE").write_text("Apache-2.0")
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in sorted(folder.rglob("*"))
            if path.is_file()}


def _ngc_zip(files: dict[str, bytes]) -> bytes:
    """A zip as NGC's monaihosting serves it: one top folder named after the bundle."""
    stream = io.BytesIO()
    with zipfile.ZipFile(stream, "w") as archive:
        for path, content in files.items():
            archive.writestr(f"Zoo_Bundle/{path}", content)
    return stream.getvalue()


def _git_blob_sha1(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def _huggingface_layout(files: dict[str, bytes], revision: str = "0.2.0", pages: int = 2):
    """The URL paths Hugging Face serves a bundle under: the API's tree listing (paginated, model.pt as an LFS
    file with its SHA-256, the others with their git blob id) and each file under resolve/<revision>/."""
    items = []
    for path, content in files.items():
        item = {"type": "file", "path": path, "size": len(content), "oid": _git_blob_sha1(content)}
        if path.endswith(".pt"):
            item["oid"] = "1" * 40  # an LFS file's oid is that of its pointer file, not of the content
            item["lfs"] = {"oid": hashlib.sha256(content).hexdigest(), "size": len(content), "pointerSize": 134}
        items.append(item)
    listing = "/api/models/MONAI/Zoo_Bundle/tree/0.2.0"
    served = {f"/MONAI/Zoo_Bundle/resolve/{revision}/{path}": content for path, content in files.items()}
    headers, half = {}, len(items) // pages + 1
    for page in range(pages):
        url = f"{listing}?recursive=true" + (f"&cursor={page}" if page else "")
        chunk = items[page * half:(page + 1) * half] + [{"type": "directory", "path": "configs", "oid": "2" * 40}]
        served[url] = json.dumps(chunk).encode()
        if page + 1 < pages:
            headers[url] = {"Link": f'<{listing}?recursive=true&cursor={page + 1}>; rel="next"'}
    return served, headers


@pytest.fixture
def zoo_entry(monkeypatch):
    """A catalog entry for the bundle Zoo_Bundle 0.2.0, hosted as given."""

    def add(hosting: str, checksum: dict | None = None) -> str:
        source = {"monai_zoo": {"name": "Zoo_Bundle", "version": "0.2.0", "hosting": hosting}}
        if checksum:
            source["checksum"] = checksum
        entry = {"id": "zoo-hosted", "title": "Test bundle", "task": "segmentation", "license": "Apache-2.0",
                 "source": source}
        _validator().validate({"version": 1, "models": [entry]})
        monkeypatch.setitem(catalog._entries(), "zoo-hosted", entry)
        return "zoo-hosted"

    return add


def _nothing_installed() -> bool:
    root = store.models_dir()
    downloads = root / ".downloads"
    return not store.list_installed() and not [p for p in root.iterdir() if p.name != ".downloads"] and \
        not (downloads.exists() and list(downloads.iterdir()))


def test_ngc_zip_installs_checked_against_the_index_sha1(tmp_path, monkeypatch, zoo_entry):
    files = _bundle_files(tmp_path)
    payload = _ngc_zip(files)
    path = "/v2/models/nvidia/monaihosting/zoo_bundle/versions/0.2.0/files/Zoo_Bundle_v0.2.0.zip"
    server = FileServer({path: payload})
    assert hosting.zip_url({"name": "Zoo_Bundle", "version": "0.2.0"}) == "https://api.ngc.nvidia.com" + path
    monkeypatch.setenv("MEDDL_MODEL_ZOO_URL", server.base + hosting.ZIP_URLS["ngc"].split(".com", 1)[1])
    model_id = zoo_entry("ngc", {"algorithm": "sha1", "value": hashlib.sha1(payload).hexdigest()})
    installed = install.install(model_id)
    assert installed.record["source"] == server.base + path and (installed.model_path / "LICENSE").is_file()
    assert load_model(model_id).card.name == "Test bundle"


def test_ngc_zip_with_another_sha1_installs_nothing(tmp_path, monkeypatch, zoo_entry):
    server = FileServer({"/Zoo_Bundle_v0.2.0.zip": _ngc_zip(_bundle_files(tmp_path))})
    monkeypatch.setenv("MEDDL_MODEL_ZOO_URL", server.base + "/{name}_v{version}.zip")
    model_id = zoo_entry("ngc", {"algorithm": "sha1", "value": "0" * 40})
    with pytest.raises(ModelError, match=f"checksum mismatch.*expected sha1 {'0' * 40}.*discarded"):
        install.install(model_id)
    assert _nothing_installed()


def test_huggingface_bundle_installs_every_file_verified(tmp_path, monkeypatch, zoo_entry):
    files = _bundle_files(tmp_path)
    served, headers = _huggingface_layout(files)
    server = FileServer(served, headers)
    monkeypatch.setenv("MEDDL_HUGGINGFACE_URL", server.base)
    installed = install.install(zoo_entry("huggingface"))
    checked = installed.record["checksum"]["files"]
    assert set(checked) == set(files) and checked["models/model.pt"]["algorithm"] == "sha256"
    assert checked["configs/metadata.json"] == {"algorithm": "git-blob-sha1",
                                                "value": _git_blob_sha1(files["configs/metadata.json"])}
    assert all((installed.model_path / path).read_bytes() == content for path, content in files.items())
    assert installed.record["source"] == f"{server.base}/MONAI/Zoo_Bundle/tree/0.2.0"
    assert sum(path.startswith("/api/") for path, _ in server.requests) == 2  # both pages of the listing
    assert load_model("zoo-hosted").card.name == "Test bundle"
    assert not list((store.models_dir() / ".downloads").iterdir())  # the fetched files moved into the library


@pytest.mark.parametrize("altered", ["models/model.pt", "configs/inference.json"])
def test_huggingface_file_that_differs_from_its_listing_installs_nothing(tmp_path, monkeypatch, zoo_entry, altered):
    files = _bundle_files(tmp_path)
    served, headers = _huggingface_layout(files)
    served[f"/MONAI/Zoo_Bundle/resolve/0.2.0/{altered}"] += b" "  # what arrives is not what the listing says
    monkeypatch.setenv("MEDDL_HUGGINGFACE_URL", FileServer(served, headers).base)
    with pytest.raises(ModelError, match=f"checksum mismatch for .*{altered}.*discarded"):
        install.install(zoo_entry("huggingface"), trust=True)
    assert _nothing_installed()


def test_huggingface_listing_without_a_checksum_installs_nothing(tmp_path, monkeypatch, zoo_entry):
    served, headers = _huggingface_layout(_bundle_files(tmp_path), pages=1)
    url = "/api/models/MONAI/Zoo_Bundle/tree/0.2.0?recursive=true"
    listing = json.loads(served[url])
    del listing[0]["oid"]
    served[url] = json.dumps(listing).encode()
    monkeypatch.setenv("MEDDL_HUGGINGFACE_URL", FileServer(served, headers).base)
    with pytest.raises(ModelError, match="gives no checksum for"):
        install.install(zoo_entry("huggingface"))
    assert _nothing_installed()


def test_interrupted_huggingface_download_resumes(tmp_path, monkeypatch, zoo_entry):
    files = _bundle_files(tmp_path)
    served, headers = _huggingface_layout(files)
    server = FileServer(served, headers)
    weights = "/MONAI/Zoo_Bundle/resolve/0.2.0/models/model.pt"
    server.drop = weights
    monkeypatch.setenv("MEDDL_HUGGINGFACE_URL", server.base)
    model_id = zoo_entry("huggingface")
    with pytest.raises(ModelError, match="interrupted"):
        install.install(model_id)
    assert not store.list_installed()
    first_attempt = len(server.requests)
    fetched_before = {path for path, _ in server.requests if "/resolve/" in path}
    install.install(model_id)
    ranges = {path: byte_range for path, byte_range in server.requests[first_attempt:] if "/resolve/" in path}
    assert ranges[weights] == f"bytes={len(files['models/model.pt']) // 2}-"  # the weights resumed half way
    assert not set(ranges) & (set(fetched_before) - {weights})  # verified files were not fetched again
    assert catalog.is_installed(model_id)
