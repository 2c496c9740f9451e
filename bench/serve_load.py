"""``cnnkit serve`` under load: 1, 4 and 16 concurrent clients, and the bad uploads after.

Both sides run here, on 127.0.0.1: the server is ``python -m cnnkit serve RUN`` in its own
process (as a user starts it), the clients are threads of this process, each its own
``gradio_client.Client`` (its own session, as each browser tab is) that uploads a real
image, waits for the answer and sends the next one, downloading the two output images
as the page does. Two models:

* **digits**: LeNet trained for one epoch on the embedded MNIST subset; the images are
  16 real MNIST test digits as PNG files.
* **photos**: ImageNet-pretrained EfficientNet-Lite0 with a new 10-class head trained on
  imagenette-2k (frozen backbone, 3 epochs, about a minute on 2 cores), or the run given
  with ``--checkpoint``; the images are 16 imagenette-2k validation JPEGs.

The 16 files go round-robin, so with 16 clients the same file (the same answer) is often
in flight twice at once, as when two users click one example.

Every answer is checked: its top label and probability must be what ``Predictor.load``
gives for the same file in this process (the server loads the model the same way). A
level ends after ``--requests`` answers or ``--seconds``, whichever comes first; each is
run ``--repeats`` times and the table gives the medians: requests/s (answers over the
level's wall time), p50 and p95 latency (upload to answer, per request), errors (failed
or wrong answers, summed over repeats) and the server's resident memory (``VmRSS``)
before the first level and after the last, with its peak (``VmHWM``). Each server
setting in ``--concurrency`` gets a fresh server. Then each bad upload (a non-image, a
truncated JPEG, a 20000x20000 PNG, a zero-byte file, and an 11 MB file over the 10 MB
limit) is sent once: its message, and whether the server still answers correctly.

The clients share the 2 cores with the server: the figures are what one machine does
with both, not the server alone.

Usage (from the repository root)::

    .venv/bin/python bench/serve_load.py                  # both models, --concurrency 1 and 2: ~25 min on 2 cores
    .venv/bin/python bench/serve_load.py --quick          # digits only, one repeat, ~2 min
    .venv/bin/python bench/serve_load.py --checkpoint RUN # the photo model from RUN
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

os.environ["CNNKIT_OFFLINE"] = "1"  # never time a network probe
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import httpx  # noqa: E402
from machine import core_count, machine_lines  # noqa: E402
from PIL import Image  # noqa: E402

import cnnkit  # noqa: E402
from cnnkit.inference import Predictor  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CLIENTS = (1, 4, 16)
IMAGES = 16  # distinct files per model, sent round-robin: clients often send the same file at once
PROBABILITY_TOLERANCE = 1e-4  # the server's top probability vs the in-process one


def data_folder() -> Path:
    return Path(os.environ.get("CNNKIT_DATA", ROOT.parent / "shared" / "data")) / "imagenette-2k"


# ----------------------------------------------------------------------------- models, images


def digits_model(out: Path) -> tuple[Path, list[Path]]:
    """LeNet, one epoch on the embedded digits, and 16 real test digits as PNG files."""
    from cnnkit.data.datasets import load_source

    run = cnnkit.train(epochs=1, output_dir=str(out), name="digits", report=False, progress=False,
                       log=lambda line: None)  # fmt: skip
    images, _ = load_source("embedded-mnist", None, False).test
    folder = out / "digit-images"
    folder.mkdir()
    files = []
    for index in range(IMAGES):
        files.append(folder / f"digit-{index:02d}.png")
        Image.fromarray(images[index, 0].numpy()).save(files[-1])
    return run.dir, files


def photo_model(out: Path, given: str | None) -> tuple[Path, list[Path]]:
    """Lite0 on imagenette-2k (or ``given``), and 16 validation JPEGs, one or two per class."""
    data = data_folder()
    if given:
        run = Path(given)
    else:
        trained = cnnkit.train(data=str(data), model="timm:efficientnet_lite0", pretrained=True, freeze=True,
                               epochs=3, batch_size=64, lr=1e-3, optimizer="adam", augment="none", device="cpu",
                               output_dir=str(out), name="lite0-imagenette", report=False, progress=False,
                               log=lambda line: None)  # fmt: skip
        print(f"trained {trained.dir}: val acc {trained.metrics.get('val_acc', float('nan')):.2%}")
        run = trained.dir
    classes = sorted(p for p in (data / "val").iterdir() if p.is_dir())
    per_class = [sorted(folder.glob("*.JPEG")) for folder in classes]
    files = [paths[i] for i in range(IMAGES) for paths in per_class][:IMAGES]  # interleaved classes
    return run, files


def expected_answers(run: Path, files: list[Path]) -> dict[str, tuple[str, float]]:
    """file -> (top label, its probability) from the Predictor in this process."""
    predictor = Predictor.load(run)  # as `cnnkit serve RUN` loads it
    predictions = predictor.predict([str(f) for f in files], topk=1)
    return {str(f): (p.label, p.confidence) for f, p in zip(files, predictions, strict=True)}


# ----------------------------------------------------------------------------- the server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve_command(run: Path, flags: list[str]) -> list[str]:
    """``cnnkit serve RUN FLAGS`` as a user starts it (``--port`` is added by :class:`Server`)."""
    return [sys.executable, "-m", "cnnkit", "serve", str(run), "--examples", "0", "--device", "cpu", *flags]


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Server:
    """``command --port P`` (a server on a free port of 127.0.0.1) until :meth:`stop`."""

    def __init__(self, command: list[str], log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log = log
        command = [*command, "--port", str(self.port)]
        with log.open("w") as out:
            # a bench started in the background (`cmd &`) ignores SIGINT and its children inherit
            # that: give the server its normal Ctrl-C, which stop() sends
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                            env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
                                            preexec_fn=_default_sigint)  # fmt: skip
        deadline = time.monotonic() + 180
        while not self._answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise SystemExit(f"the server did not come up:\n{log.read_text()}")
            time.sleep(0.5)

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(self.url, timeout=5) as response:
                return response.status == 200
        except OSError:
            return False

    def memory_mb(self) -> tuple[float, float]:
        """(resident, peak resident) memory of the server process, MB."""
        fields = {}
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            fields[key] = value.split()
        return int(fields["VmRSS"][0]) / 1024, int(fields["VmHWM"][0]) / 1024

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # Ctrl-C: the server's own way out
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


# ----------------------------------------------------------------------------- the clients


@dataclass
class Level:
    """One run of ``clients`` concurrent clients."""

    clients: int
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else float("nan")


def connect(url: str, count: int) -> list:
    from gradio_client import Client

    return [Client(url, verbose=False) for _ in range(count)]


def answer_error(result, expected: tuple[str, float]) -> str | None:
    """Why a /predict_image answer differs from the in-process prediction, or None."""
    label, probability = expected
    top = result[0]
    got = next((c["confidence"] for c in top["confidences"] if c["label"] == top["label"]), float("nan"))
    if top["label"] != label or not abs(got - probability) <= PROBABILITY_TOLERANCE:
        return f"wrong answer: {top['label']} ({got:.6f}), expected {label} ({probability:.6f})"
    return None


def run_level(clients: list, files: list[str], expected: dict, requests: int, seconds: float) -> Level:
    """``len(clients)`` threads, each sending the next file as soon as it has its answer."""
    from gradio_client import handle_file

    level = Level(len(clients))
    lock = threading.Lock()
    issued = [0]
    deadline = time.monotonic() + seconds

    def client_loop(client) -> None:
        while True:
            with lock:
                if issued[0] >= requests or time.monotonic() > deadline:
                    return
                path = files[issued[0] % len(files)]
                issued[0] += 1
            start = time.perf_counter()
            try:
                result = client.predict(handle_file(path), api_name="/predict_image")
                problem = answer_error(result, expected[path])
            except Exception as exc:  # any failure counts: the point is that there are none
                problem = f"{type(exc).__name__}: {exc}"
            with lock:
                if problem:
                    level.errors.append(problem)
                else:
                    level.latencies.append(time.perf_counter() - start)

    threads = [threading.Thread(target=client_loop, args=(c,), daemon=True) for c in clients]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    level.seconds = time.perf_counter() - start
    return level


# ----------------------------------------------------------------------------- bad uploads


def bad_uploads(folder: Path) -> dict[str, Path]:
    """The files a demo must survive, by what they are."""
    folder.mkdir(exist_ok=True)
    files = {"non-image": folder / "notes.png", "truncated JPEG": folder / "photo.jpg",
             "20000x20000 PNG": folder / "huge.png", "zero bytes": folder / "empty.png",
             "11 MB (limit 10 MB)": folder / "large.png"}  # fmt: skip
    files["non-image"].write_text("these are notes, not an image\n" * 20)
    photo = sorted((data_folder() / "val").rglob("*.JPEG"))[0].read_bytes()
    files["truncated JPEG"].write_bytes(photo[: len(photo) // 2])
    write_blank_png(files["20000x20000 PNG"], 20000, 20000)
    files["zero bytes"].write_bytes(b"")
    files["11 MB (limit 10 MB)"].write_bytes(os.urandom(11 * 1024 * 1024))
    return files


def write_blank_png(path: Path, width: int, height: int) -> None:
    """A valid all-black greyscale PNG of any size, written a row at a time (no big buffer)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer = zlib.compressobj(9)
    row = bytes(width + 1)  # filter byte 0, then the row's pixels
    compressed = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", compressed) + chunk(b"IEND", b""))


def try_bad_uploads(server: Server, bad: dict[str, Path], probe: str, expected: dict) -> list[tuple[str, str]]:
    """(what, the message the client got) for each bad file, each followed by a good request
    whose answer must be right; the file over the size limit is also posted to the server's
    upload route directly (gradio_client refuses it before sending)."""
    from gradio_client import Client, handle_file

    client = Client(server.url, verbose=False)
    seen = []
    for what, path in bad.items():
        try:
            client.predict(handle_file(str(path)), api_name="/predict_image")
            seen.append((what, "ANSWERED (it should have been refused)"))
        except Exception as exc:
            seen.append((what, " ".join(str(exc).split())))
        if path.stat().st_size > 10 * 1024 * 1024:
            with path.open("rb") as body:
                response = httpx.post(f"{server.url}gradio_api/upload", files={"files": (path.name, body)}, timeout=60)
            seen.append((f"{what}, posted anyway", f"HTTP {response.status_code}: {response.text}"))
        problem = answer_error(client.predict(handle_file(probe), api_name="/predict_image"), expected[probe])
        if problem:
            raise SystemExit(f"after the {what} upload the server answers wrong: {problem}")
    return seen


# ----------------------------------------------------------------------------- the table


def measure(name: str, run: Path, files: list[Path], flags: list[str], args, tmp: Path,
            command: list[str] | None = None) -> list[str]:  # fmt: skip
    """The table rows for one model and server setting (a fresh server): ``cnnkit serve
    RUN FLAGS``, or ``command`` (another server of the same API, to compare)."""
    expected = expected_answers(run, files)
    paths = [str(f) for f in files]
    server = Server(command or serve_command(run, flags), tmp / "server.log")
    rows = []
    try:
        warm = connect(server.url, 1)
        run_level(warm, paths, expected, len(paths), args.seconds)  # first calls: imports, caches
        before, _ = server.memory_mb()
        for count in CLIENTS:
            clients = connect(server.url, count)
            levels = [run_level(clients, paths, expected, args.requests, args.seconds) for _ in range(args.repeats)]
            rss, peak = server.memory_mb()
            errors = [e for level in levels for e in level.errors]
            rows.append(f"| {name} | {' '.join(flags) or 'defaults'} | {count} | "
                        f"{sum(len(lv.latencies) for lv in levels) + len(errors)} | "
                        f"{statistics.median(lv.rate for lv in levels):.1f} | "
                        f"{statistics.median(lv.percentile(0.5) for lv in levels) * 1000:.0f} | "
                        f"{statistics.median(lv.percentile(0.95) for lv in levels) * 1000:.0f} | "
                        f"{len(errors)} | {before:.0f} -> {rss:.0f} (peak {peak:.0f}) |")  # fmt: skip
            print(rows[-1], flush=True)
            for error in sorted(set(errors))[:5]:
                print(f"    error: {error}")
        if args.bad:
            for what, message in try_bad_uploads(server, bad_uploads(tmp / "bad"), paths[0], expected):
                print(f"    {what}: {message}")
            rss, peak = server.memory_mb()
            print(f"    after the bad uploads: still answering correctly; RSS {rss:.0f} MB (peak {peak:.0f} MB)")
    finally:
        server.stop()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", metavar="RUN", help="the photo model (default: train Lite0 on imagenette-2k)")
    parser.add_argument("--quick", action="store_true", help="digits only (photos too with --checkpoint), one repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--requests", type=int, default=160, help="answers per level at most")
    parser.add_argument("--seconds", type=float, default=40.0, help="a level stops sending after this")
    parser.add_argument("--concurrency", default="1,2", help="server --concurrency settings to compare")
    parser.add_argument("--no-bad", dest="bad", action="store_false", help="skip the bad uploads")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # `kill` stops the servers too (finally)
    if args.quick:
        args.repeats, args.requests, args.seconds, args.concurrency = 1, 48, 20.0, "1"
    print("\n".join(machine_lines(core_count())))
    print(f"cnnkit serve on 127.0.0.1, clients: gradio_client threads in this process; "
          f"{args.requests} answers or {args.seconds:.0f} s per level, medians of {args.repeats}")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        models = [("digits (LeNet)", *digits_model(tmp / "digits"))]
        if not args.quick or args.checkpoint:
            models.append(("photos (Lite0)", *photo_model(tmp / "photos", args.checkpoint)))
        print("\n| model | server | clients | requests | req/s | p50 ms | p95 ms | errors | server RSS MB |")
        print("|---|---|---|---|---|---|---|---|---|")
        rows = []
        for name, run, files in models:
            for concurrency in args.concurrency.split(","):
                rows += measure(name, run, files, ["--concurrency", concurrency.strip()], args, tmp)
        print("\n" + "\n".join(rows))


if __name__ == "__main__":
    main()
