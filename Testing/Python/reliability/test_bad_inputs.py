"""Bad input is one clear line and exit 3, never a result computed on wrong data (issue 16, defects 3, 11, 13)."""

from __future__ import annotations

import gzip
import os
import threading
from pathlib import Path

import numpy as np
import pytest
from meddl.cli import main
from meddl.errors import InputError
from meddl.image import Image
from meddl.io import read_image, write_image
from meddl_testing import blob_image, oblique_direction, write_dicom_series


def _commands(models, image: Path, out: Path) -> dict[str, list[str]]:
    return {
        "segment": ["segment", str(image), str(out / "s.nii.gz"), "--model", str(models["segmentation"])],
        "enhance": ["enhance", str(image), str(out / "e.nii.gz"), "--task", "denoise"],
        "classify": ["classify", str(image), "--model", str(models["classification"]), "--csv", str(out / "c.csv")],
    }


def _refused(capsys, argv: list[str], code: int = 3) -> str:
    capsys.readouterr()
    assert main([*argv, "--progress", "none"]) == code
    error = capsys.readouterr().err
    assert error.startswith("meddl: error:") and "Traceback" not in error, error
    return error


def _truncated(tmp_path: Path, suffix: str) -> Path:
    whole = write_image(blob_image(shape=(20, 20, 20)), tmp_path / f"whole{suffix}")
    data = whole.read_bytes()
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(data[: len(data) // 2])
    return cut


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
@pytest.mark.parametrize("command", ["segment", "enhance", "classify"])
def test_a_truncated_file_is_an_input_error(models, tmp_path, capsys, suffix, command):
    out = tmp_path / "out"
    out.mkdir()
    error = _refused(capsys, _commands(models, _truncated(tmp_path, suffix), out)[command])
    assert "cannot read image" in error
    assert list(out.iterdir()) == []


def test_corrupt_compressed_data_is_an_input_error(tmp_path):
    path = write_image(blob_image(shape=(20, 20, 20)), tmp_path / "image.nii.gz")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte: the deflate stream or its CRC no longer checks
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match="truncated or corrupt"):
        read_image(path)


def test_a_nifti_with_trailing_bytes_or_a_second_gzip_member_still_reads(tmp_path):
    path = write_image(blob_image(shape=(8, 8, 8)), tmp_path / "image.nii")
    with open(path, "ab") as stream:
        stream.write(b"\0" * 16)
    assert read_image(path).shape == (8, 8, 8)
    packed = tmp_path / "image2.nii.gz"
    data = path.read_bytes()
    packed.write_bytes(gzip.compress(data[:1000]) + gzip.compress(data[1000:]))
    assert read_image(packed).shape == (8, 8, 8)


def test_a_sheared_grid_is_refused_not_coerced(models, tmp_path, capsys):
    shear = np.array([[1.0, 0.3, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    header = ("NRRD0004\ntype: float\ndimension: 3\nspace: left-posterior-superior\nsizes: 8 8 8\n"
              f"space directions: {' '.join('(' + ','.join(map(str, column)) + ')' for column in shear.T)}\n"
              "kinds: domain domain domain\nendian: little\nencoding: raw\nspace origin: (0,0,0)\n\n")
    path = tmp_path / "sheared.nrrd"
    path.write_bytes(header.encode() + np.ones(512, "<f4").tobytes())
    error = _refused(capsys, _commands(models, path, tmp_path)["segment"])
    assert "non-orthogonal" in error
    assert read_image(write_image(Image(np.ones((4, 4, 4), np.float32), direction=oblique_direction()),
                                  tmp_path / "oblique.nrrd")).shape == (4, 4, 4)  # oblique is fine


def test_a_dicom_series_with_a_missing_slice_is_refused(tmp_path):
    files = write_dicom_series(blob_image(shape=(8, 10, 12)), tmp_path)
    assert read_image(tmp_path).shape == (8, 10, 12)
    files[4].unlink()
    with pytest.raises(InputError, match="incomplete or unevenly spaced"):
        read_image(tmp_path)


def test_a_folder_of_several_series_names_them(tmp_path):
    write_dicom_series(blob_image(shape=(4, 10, 12)), tmp_path, "1.2.3.4.100001", "T1 axial")
    write_dicom_series(blob_image(shape=(5, 10, 12)), tmp_path, "1.2.3.4.100002", "T2 axial")
    with pytest.raises(InputError, match="holds 2 DICOM series") as error:
        read_image(tmp_path)
    assert "T1 axial, 4 files" in str(error.value) and "T2 axial, 5 files" in str(error.value)


def test_a_fifo_is_refused_without_waiting(models, tmp_path, capsys):
    fifo = tmp_path / "pipe.nii.gz"
    os.mkfifo(fifo)
    finished = threading.Event()

    def unblock() -> None:  # if the fifo were opened, this writer would let the test end instead of hanging
        if not finished.wait(10):
            with open(fifo, "wb") as stream:
                stream.write(b"x")

    threading.Thread(target=unblock, daemon=True).start()
    error = _refused(capsys, _commands(models, fifo, tmp_path)["segment"])
    finished.set()
    assert "not a regular file" in error


@pytest.mark.parametrize("device", ["cuda", "cuda:3"])
def test_the_device_is_checked_first_by_every_command(models, tmp_path, capsys, device):
    folder = models["folder"]
    image = str(folder / "noisy.nii.gz")
    for argv in (["enhance", image, str(tmp_path / "e.nii.gz"), "--task", "denoise", "--steps", "0"],
                 ["register", image, image, "--method", "affine", "--out-transform", str(tmp_path / "t.nii.gz")]):
        _refused(capsys, [*argv, "--device", device], 6)
    assert list(tmp_path.iterdir()) == []


def test_an_error_starts_its_own_line_after_a_progress_bar():
    import io

    from meddl.cli.reporting import _report_failure
    from meddl.progress import TerminalProgress

    stream = io.StringIO()
    bar = TerminalProgress(stream)
    bar(0.4, "segmenting")
    _report_failure(bar, None, "InputError", "bad", 3, "error: bad")
    assert stream.getvalue().endswith("\n")


@pytest.mark.parametrize("suffix", [".nrrd", ".mha", ".nhdr", ".mhd"])
def test_corrupt_compressed_nrrd_and_metaimage_data_are_input_errors(tmp_path, suffix):
    path = write_image(blob_image(shape=(20, 20, 20)), tmp_path / f"image{suffix}")
    data_file = {".nhdr": tmp_path / "image.raw.gz", ".mhd": tmp_path / "image.zraw"}.get(suffix, path)
    data = bytearray(data_file.read_bytes())
    data[-12] ^= 0xFF  # inside the deflate stream or its check value
    data_file.write_bytes(bytes(data))
    with pytest.raises(InputError, match="truncated or corrupt"):
        read_image(path)


def test_a_header_whose_data_file_is_a_pipe_or_a_device_is_refused(tmp_path):
    path = write_image(blob_image(shape=(8, 8, 8)), tmp_path / "image.mhd", compress=False)
    (tmp_path / "image.raw").unlink()
    os.mkfifo(tmp_path / "image.raw")
    with pytest.raises(InputError, match="not a regular file"):
        read_image(path)
    (tmp_path / "image.raw").unlink()
    (tmp_path / "image.raw").symlink_to("/dev/zero")
    with pytest.raises(InputError, match="not a regular file"):
        read_image(path)


def test_a_model_that_is_a_pipe_or_a_device_is_refused_at_once(models, tmp_path, capsys):
    (tmp_path / "zero.pt").symlink_to("/dev/zero")
    os.mkfifo(tmp_path / "pipe.pt")
    for model in ("zero.pt", "pipe.pt"):
        (tmp_path / model).with_suffix(".json").write_text("{}")
        _refused(capsys, ["segment", str(models["folder"] / "noisy.nii.gz"), str(tmp_path / "s.nii.gz"), "--model",
                          str(tmp_path / model)], 4)
        capsys.readouterr()
        assert main(["models", "import", str(tmp_path / model), "--id", "x"]) == 4


def test_a_device_name_that_is_no_device_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["enhance", "a.nii.gz", str(tmp_path / "e.nii.gz"), "--task", "denoise", "--device", "gpu"])
    assert exit_info.value.code == 2 and "expected one of auto, cpu, cuda, mps or cuda:N" in capsys.readouterr().err
