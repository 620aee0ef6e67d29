"""The MedDL server on loopback against the local worker: brain extraction of the real MNI152 T1 (1 mm) through
`meddl serve` (upload, queue, progress, download) and through the local `meddl worker` that Slicer uses, in the same
run; then the server's throughput with 1, 4 and 16 clients submitting at once (one key each).

Target: server time <= 1.2x the local worker's (median of warm runs: both keep the model loaded).
--quick: one timed run each and 1 and 4 clients, to check the script (results to a temporary file).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "MedDLExtension"), str(Path(__file__).resolve().parent)]
import harness  # noqa: E402
from meddl.cli.segment import SegmentRequest  # noqa: E402
from meddl.io import read_image  # noqa: E402
from meddl.sample_data import mni152_paths  # noqa: E402
from meddl.server import keys  # noqa: E402
from meddl.server.client import ServerClient  # noqa: E402
from MedDLLib.jobs import EngineJob, JobState, shut_down_workers  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "server.json"
REPEATS, QUICK_REPEATS = 3, 1
CLIENTS, QUICK_CLIENTS = (1, 4, 16), (1, 4)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(work: Path, key_file: Path, *options: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "meddl", "serve", "--host", "127.0.0.1", "--port", str(port),
                                "--api-key-file", str(key_file), "--work-dir", str(work / "server-work"),
                                "--workers", "1", *options],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"meddl serve ended:\n{process.stderr.read()[-3000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return process, url
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError("meddl serve did not start")


def local_run(image: str, output: Path) -> float:
    start = time.perf_counter()
    job = EngineJob(SegmentRequest(image, str(output), device="cpu"), device="cpu")
    if job.wait(600) is not JobState.SUCCEEDED:
        raise RuntimeError(f"the local worker failed: {job.error}")
    job.finish()
    return time.perf_counter() - start


def server_run(client: ServerClient, image: str, output: Path) -> float:
    start = time.perf_counter()
    client.run(SegmentRequest(image, str(output), device="cpu"))
    return time.perf_counter() - start


def timed(run, repeats: int) -> list[float]:
    run()  # warm-up: the worker loads torch and the model once, as in a session
    return [run() for _ in range(repeats)]


def throughput(url: str, keys_by_client: list[str], image: str, out: Path) -> dict:
    """All clients submit one job at the same moment; jobs per minute until the last result is back."""
    barrier = threading.Barrier(len(keys_by_client))
    errors: list[str] = []

    def client_job(index: int, key: str) -> None:
        client = ServerClient(url, key)
        barrier.wait()
        try:
            client.run(SegmentRequest(image, str(out / f"client{index}.nii.gz"), device="cpu"))
        except Exception as error:  # counted: a lost job fails the benchmark
            errors.append(repr(error))

    threads = [threading.Thread(target=client_job, args=(i, key)) for i, key in enumerate(keys_by_client)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - start
    done = len(keys_by_client) - len(errors)
    return {"clients": len(keys_by_client), "seconds": seconds, "jobs_done": done, "errors": errors,
            "jobs_per_minute": 60 * done / seconds}


def run_all(work: Path, repeats: int, client_counts: tuple[int, ...]) -> dict:
    image = str(mni152_paths()["t1"])
    key_file = work / "keys.txt"
    client_keys = [keys.add_key(f"client{index}", key_file) for index in range(max(client_counts))]
    local = timed(lambda: local_run(image, work / "local.nii.gz"), repeats)
    shut_down_workers()  # the server's worker gets the cores to itself
    process, url = start_server(work, key_file)
    try:
        client = ServerClient(url, client_keys[0])
        remote = timed(lambda: server_run(client, image, work / "remote.nii.gz"), repeats)
        identical = bool(np.array_equal(read_image(work / "local.nii.gz").array,
                                        read_image(work / "remote.nii.gz").array))
        loads = []
        for count in client_counts:
            (work / f"load{count}").mkdir()
            loads.append(throughput(url, client_keys[:count], image, work / f"load{count}"))
    finally:
        process.terminate()
        process.wait(timeout=60)
    ratio = statistics.median(remote) / statistics.median(local)
    return {"machine": {"cpu_count": os.cpu_count()}, "model": "deepbet-brain-extraction (default), CPU",
            "local_worker_seconds": local, "server_seconds": remote, "ratio": ratio, "target_met": ratio <= 1.2,
            "labels_identical": identical, "throughput": loads}


def markdown_table(report: dict) -> str:
    local, remote = statistics.median(report["local_worker_seconds"]), statistics.median(report["server_seconds"])
    rows = ["| path (MNI T1, 1 mm, CPU) | median time | ratio | target | met |", "|---|---|---|---|---|",
            f"| local worker (Slicer's) | {local:.2f} s | | | |",
            f"| server on loopback | {remote:.2f} s | {report['ratio']:.2f}x | <= 1.2x | "
            f"{'yes' if report['target_met'] else '**no**'} |", "",
            "| clients at once | wall time | jobs done | jobs per minute |", "|---|---|---|---|"]
    rows += [f"| {load['clients']} | {load['seconds']:.1f} s | {load['jobs_done']} of {load['clients']} | "
             f"{load['jobs_per_minute']:.1f} |" for load in report["throughput"]]
    rows.append(f"\nLabel maps identical through the server and the local worker: "
                f"{'yes' if report['labels_identical'] else '**no**'}.")
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one timed run, 1 and 4 clients; temporary results")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="meddl-bench-server-") as work:
        report = run_all(Path(work), QUICK_REPEATS if args.quick else REPEATS,
                         QUICK_CLIENTS if args.quick else CLIENTS)
    harness.publish("server", report, markdown_table(report), RESULTS, args.quick)
    lost = any(load["errors"] for load in report["throughput"])
    return 0 if report["target_met"] and report["labels_identical"] and not lost else 1


if __name__ == "__main__":
    sys.exit(main())
