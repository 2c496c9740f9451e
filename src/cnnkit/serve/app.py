"""The Gradio demo of a trained classifier: draw or upload an image, see the ranked classes.

:func:`build_demo` lays the page out for the model it is given: digit models (one channel,
a small input such as MNIST's 28x28) get a sketchpad whose drawing is prepared the way
MNIST's digits were (:func:`cnnkit.serve.drawing.mnist_style`) and an upload tab; other
models get an image input (upload, clipboard, webcam). Every prediction also shows the
exact input the model saw and, for PyTorch models, a Grad-CAM overlay. Gradio is imported
only when a demo is built, so importing this module costs nothing and needs no gradio.

Under load (measured in ``bench/serve_load.py``): Gradio's queue runs one prediction at a
time per server by default (:data:`CONCURRENCY`) and holds at most :data:`QUEUE_SIZE`
waiting requests; uploads reach :func:`read_upload` undecoded, so a bad file gets cnnkit's
own message on the page and a huge one is refused from its header before any decoding.

What a client may send: files it uploads with its request, nothing else. Every event of a
page built here (public or not) runs :func:`refuse_server_paths` on its inputs before Gradio
reads them: a file reference (a payload naming a ``path``) outside Gradio's upload folder is
refused with one message, :data:`NOT_UPLOADED`, whether that file exists or not. Gradio checks
this itself only for payloads tagged ``gradio.FileData``; an untagged ``{"path": ...}`` reached
an image input's preprocessing (or a handler) unchecked.
"""

from __future__ import annotations

import hashlib
import html
import io
import os
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from cnnkit.atomic import write_bytes
from cnnkit.data.folder import ImageLoadError, load_image
from cnnkit.errors import CnnkitError, UsageError
from cnnkit.evaluation.explain import display_image, grad_cam
from cnnkit.inference import Prediction, Predictor
from cnnkit.serve.drawing import mnist_style

MAX_PIXELS = 40_000_000  # larger uploads are refused with a message (a 12 MP photo is 12,000,000)
MAX_FILE_SIZE = "10mb"  # Gradio refuses larger uploads before they reach the model
CONCURRENCY = 1  # requests handled at once (the model runs one at a time anyway: see DemoModel)
QUEUE_SIZE = 64  # requests waiting beyond this are told the queue is full, not kept in memory
MODEL_GROUP = "model"  # Gradio concurrency id shared by every event that runs the model
DISPLAY_SIDE = 224  # small inputs (28x28 digits) are shown enlarged to about this side
CANVAS = (280, 280)  # sketchpad width, height in pixels: 10x MNIST's 28x28
BRUSH_SIZE = (
    18  # px on the canvas: strokes 2-3 px wide once a digit is scaled into MNIST's 20 px box
)
DIGIT_INPUT_MAX = 64  # a one-channel model whose input side is at most this is a digit model

PORTS = (1, 65535)  # --port must be in this range
LOOPBACK_NAMES = ("localhost",)  # host names taken for the loopback interface (IP addresses are parsed)
NOT_UPLOADED = "refused: send the file itself with the request (an upload); a file path on the server is never read"

Outputs = tuple[dict[str, float], Image.Image, Image.Image | None, str]  # classes, input, Grad-CAM, verdict


def _gradio() -> Any:
    # Gradio phones home (version check, telemetry) unless told not to; a demo must not wait
    # on the network, and many machines that serve one have none.
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio as gr
    except ImportError:
        raise CnnkitError("the demo needs gradio: pip install 'cnnkit[serve]'") from None
    return gr


def check_address(host: str, port: int) -> None:
    """Refuse a ``--port`` outside 1-65535 (a :class:`UsageError`) and, by binding it for a
    moment, a host:port this machine cannot serve on (a :class:`CnnkitError`): before a
    command loads a model or creates a project folder."""
    import socket

    if isinstance(port, bool) or not isinstance(port, int) or not PORTS[0] <= port <= PORTS[1]:
        raise UsageError(f"--port must be between {PORTS[0]} and {PORTS[1]}, got {port}")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds it
            probe.bind(address)
    except OSError as exc:  # socket.gaierror included: an unknown host name
        reason = exc.strerror or str(exc)
        raise CnnkitError(f"cannot serve on {host}:{port} ({reason}); choose another --port or --host") from None


def is_loopback(host: str) -> bool:
    """``host`` is this machine's loopback interface (``127.0.0.1``, ``::1``, ``localhost``):
    only processes on this machine can reach a page bound to it."""
    import ipaddress

    if host.strip().lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


def uploaded_file(path: Any, upload_folder: str | os.PathLike[str]) -> Path:
    """``path`` resolved (symbolic links, ``..``), if it names a file inside ``upload_folder``
    (Gradio's folder of uploaded files); else :class:`UsageError` :data:`NOT_UPLOADED`.

    Nothing is opened and the answer does not depend on whether the file exists: a client
    learns nothing about the server's files from it.
    """
    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
        raise UsageError(NOT_UPLOADED)
    text = os.fspath(path)
    if "://" in text or text.startswith("data:"):  # a URL (Gradio may fetch it): not an upload
        raise UsageError(NOT_UPLOADED)
    resolved = Path(os.path.realpath(text))
    folder = Path(os.path.realpath(upload_folder))
    if resolved == folder or not resolved.is_relative_to(folder):
        raise UsageError(NOT_UPLOADED)
    return resolved


def refuse_server_paths(value: Any, upload_folder: str | os.PathLike[str]) -> None:
    """Raise :class:`UsageError` :data:`NOT_UPLOADED` when ``value`` (an event's inputs, as
    the client sent them) holds a file reference, a dict with a ``path`` (Gradio's file
    payload, tagged or not, at any depth), naming anything but a file in ``upload_folder``."""
    if isinstance(value, dict):
        if "path" in value and value["path"] is not None:
            uploaded_file(value["path"], upload_folder)
        for item in value.values():
            refuse_server_paths(item, upload_folder)
    elif isinstance(value, (list, tuple)):
        for item in value:
            refuse_server_paths(item, upload_folder)


_PAGE_CLASS: Any = None


def page_class(gr: Any) -> Any:
    """``gradio.Blocks`` whose every event refuses file references outside Gradio's upload
    folder (:func:`refuse_server_paths`) before Gradio or a handler reads them; the class of
    ``cnnkit serve``'s and the studio's pages."""
    global _PAGE_CLASS
    if _PAGE_CLASS is None:

        class UploadsOnlyBlocks(gr.Blocks):
            async def preprocess_data(self, block_fn: Any, inputs: list[Any], state: Any, *args: Any,
                                      **kwargs: Any) -> Any:  # fmt: skip
                # the one door every event's inputs pass through (public, private and
                # examples events alike), before Gradio moves, validates or opens a file
                try:
                    refuse_server_paths(inputs, self.GRADIO_CACHE)
                except UsageError as exc:
                    raise gr.Error(str(exc), print_exception=False) from None
                return await super().preprocess_data(block_fn, inputs, state, *args, **kwargs)

        if not hasattr(gr.Blocks, "preprocess_data"):  # a Gradio without that door: refuse to serve unguarded
            raise CnnkitError(f"gradio {gr.__version__} is not supported by this cnnkit (no Blocks.preprocess_data)")
        _PAGE_CLASS = UploadsOnlyBlocks
    return _PAGE_CLASS


def is_digit_model(predictor: Predictor) -> bool:
    """One input channel and a small input (MNIST-like): the demo offers a sketchpad."""
    pre = predictor.preprocess
    return pre.channels == 1 and max(pre.input_size) <= DIGIT_INPUT_MAX


class DemoModel:
    """What the demo's event handlers call: image in, (top-k, model input, Grad-CAM) out.

    Kept free of Gradio so it can be tested and reused. One thread runs the model (and
    Grad-CAM), whichever thread calls: model calls are serialised, since Grad-CAM hooks the
    model and two requests may arrive at once, and the memory torch allocates stays in that
    one thread's malloc arena. Run from Gradio's pool of worker threads, glibc gave each
    thread an arena of its own and the server's resident memory grew by 680 MB over 768
    photo requests (Lite0 with Grad-CAM, 16 clients; 120 MB with one model thread:
    ``bench/serve_load.py``).

    Args:
        predictor: the model and its preprocessing.
        topk: classes listed.
        gradcam: add a Grad-CAM overlay (only for PyTorch models).
        max_pixels: larger images are refused.
    """

    def __init__(
        self,
        predictor: Predictor,
        *,
        topk: int = 5,
        gradcam: bool = True,
        max_pixels: int = MAX_PIXELS,
    ) -> None:
        self.predictor = predictor
        self.topk = max(1, min(topk, len(predictor.class_names)))
        self.gradcam = gradcam and predictor.model is not None
        self.max_pixels = max_pixels
        self._model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cnnkit-model")

    def drawing(self, value: Any) -> Outputs:
        """A sketchpad value (Gradio's editor dict, or an image) -> outputs."""
        image = editor_image(value)
        if image is None:
            raise UsageError("draw a digit first: the canvas is empty")
        self._check_size(image)
        side = self.predictor.preprocess.input_size
        box = round(min(side) * 20 / 28)  # MNIST's 20 px box in its 28 px field, at this size
        return self.image(mnist_style(image, size=min(side), box=box))

    def upload(self, value: Any) -> Outputs:
        """An uploaded file -> outputs, the file decoded by :func:`read_upload`.

        ``value``: Gradio's file payload (a dict with ``path`` and ``orig_name``: the event
        runs with ``preprocess=False``, so Gradio has not opened the file), a file path, or
        an image (PIL or array) as :meth:`image` takes.
        """
        if isinstance(value, dict):
            path, name = value.get("path"), value.get("orig_name")
            if not path:
                raise UsageError("upload an image first")
            value = read_upload(path, self.predictor.mode, name=name, max_pixels=self.max_pixels)
        elif isinstance(value, (str, os.PathLike)):
            value = read_upload(value, self.predictor.mode, max_pixels=self.max_pixels)
        return self.image(value)

    def image(self, image: Any) -> Outputs:
        """An image (PIL, possibly not decoded yet, or an array) -> outputs.

        It goes through the checkpoint's preprocessing as an image file would (no inversion:
        uploads to a digit model are taken to be MNIST-like already).
        """
        if image is None:
            raise UsageError("upload an image first")
        self._check_size(image)
        x = self.predictor.prepare(image).unsqueeze(0)  # [1, C, H, W], normalised
        top, cam = self._model_thread.submit(self._run_model, x).result()
        shown = display_image(x[0], self.predictor.preprocess)  # [H, W] or [H, W, 3] in [0, 1]
        heatmap = overlay(shown, cam) if cam is not None else None
        return dict(top.topk), enlarge(to_image(shown)), heatmap, verdict(top)

    def _run_model(self, x: torch.Tensor) -> tuple[Prediction, torch.Tensor | None]:
        """(the ranked prediction, the Grad-CAM heatmap or None) for ``x`` ``[1, C, H, W]``."""
        logits, known = self.predictor.scores(x)  # [1, K], [1] or None
        top = self.predictor.rank(logits, ["input"], self.topk, known=known)[0]
        cam = grad_cam(self.predictor.model, x, top.index).heatmap if self.gradcam else None
        return top, cam


    def _check_size(self, image: Any) -> None:
        # a PIL image's size comes from its header: a huge upload is refused before decoding
        width, height = image.size if isinstance(image, Image.Image) else np.shape(image)[1::-1]
        check_pixels(width, height, self.max_pixels)


NONE_OF_THESE = "not sure: none of these?"


def verdict(top: Prediction) -> str:
    """The line above the classes: empty when the image looks like the training data (or the
    model has no open set); else that it may be none of the classes, in plain words."""
    if top.looks_known is not False:
        return ""
    return (f"**{NONE_OF_THESE}** This image looks unlike the images the model learned from, so its answer "
            f"({top.topk[0][0]}, {top.confidence:.0%}) is probably wrong.")  # fmt: skip


def check_pixels(width: int, height: int, max_pixels: int, name: str = "the image") -> None:
    """Raise :class:`UsageError` when ``width * height`` is over ``max_pixels``."""
    if height * width > max_pixels:
        raise UsageError(
            f"{name} is {width}x{height} pixels ({height * width / 1e6:.0f} MP); "
            f"this demo takes at most {max_pixels / 1e6:.0f} MP: scale it down first"
        )


def read_upload(
    path: str | os.PathLike[str], mode: str, *, name: str | None = None, max_pixels: int = MAX_PIXELS
) -> Image.Image:
    """An uploaded file as a decoded 8-bit ``mode`` image, refused with a message if bad.

    The header is read first (no pixels are decoded), so an image of more than
    ``max_pixels`` pixels costs no memory; then :func:`cnnkit.data.folder.load_image`
    decodes it (EXIF orientation, transparency over white, strict about truncation, PIL's
    decompression-bomb guard).

    Args:
        path: the uploaded file (in Gradio's upload folder).
        mode: ``L`` or ``RGB``, the model's.
        name: the file's name as the user knows it (default: the path's base name).
        max_pixels: larger images are refused.

    Raises:
        UsageError: the file is empty, not an image, truncated or corrupt, or too large;
            the message names the file and says what was wrong.
    """
    name = name or os.path.basename(path)
    try:
        with Image.open(path) as header:  # lazy: reads the header only
            size = header.size
    except Exception:  # empty, not an image, or over PIL's own limit: load_image says which
        size = None
    if size is not None:
        check_pixels(*size, max_pixels, name=name)
    try:
        return load_image(path, mode)
    except ImageLoadError as exc:
        hint = (f"; this demo takes at most {max_pixels / 1e6:.0f} MP: scale it down first"
                if exc.kind == "decompression-bomb" else "")  # fmt: skip
        raise UsageError(f"cannot read {name}: {exc.reason.rstrip('.')}{hint}") from None


def editor_image(value: Any) -> Any:
    """The drawing in a Gradio image-editor value ``{"background", "layers", "composite"}``.

    The composite when there is one, else the background with the layers pasted over it;
    any other value (an image) is returned as is.
    """
    if not isinstance(value, dict):
        return value
    if value.get("composite") is not None:
        return value["composite"]
    layers = [layer for layer in value.get("layers") or [] if layer is not None]
    base = value.get("background")
    if base is None and not layers:
        return None
    parts = ([base] if base is not None else []) + layers
    images = [
        im if isinstance(im, Image.Image) else Image.fromarray(np.asarray(im)) for im in parts
    ]
    canvas = Image.new("RGBA", images[0].size, (255, 255, 255, 0))
    for im in images:
        canvas.alpha_composite(im.convert("RGBA").resize(canvas.size))
    return canvas


def to_image(shown: torch.Tensor) -> Image.Image:
    """A display tensor in [0, 1] (``[H, W]`` or ``[H, W, 3]``) as an 8-bit PIL image."""
    return Image.fromarray((shown.numpy() * 255).round().astype(np.uint8))


def enlarge(image: Image.Image, side: int = DISPLAY_SIDE) -> Image.Image:
    """Small images scaled up by a whole factor (nearest) so each input pixel stays visible."""
    factor = max(1, side // max(image.size))
    if factor == 1:
        return image
    return image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)


def overlay(shown: torch.Tensor, heatmap: torch.Tensor, alpha: float = 0.45) -> Image.Image:
    """The Grad-CAM heatmap (jet colours) blended over the input, at the enlarged display size."""
    from matplotlib import colormaps

    base = enlarge(to_image(shown)).convert("RGB")
    heat = Image.fromarray((heatmap.numpy() * 255).round().astype(np.uint8))
    heat = heat.resize(base.size, Image.Resampling.BILINEAR)  # smooth, unlike the enlarged pixels
    colours = colormaps["jet"](np.asarray(heat, dtype=np.float32) / 255)[
        ..., :3
    ]  # [H, W, 3], [0, 1]
    blended = (1 - alpha) * np.asarray(base, dtype=np.float32) / 255 + alpha * colours
    return Image.fromarray((blended * 255).round().astype(np.uint8))


def build_demo(
    predictor: Predictor,
    *,
    examples: Sequence[tuple[Image.Image, str]] | None = None,
    topk: int = 5,
    gradcam: bool = True,
    max_pixels: int = MAX_PIXELS,
    title: str = "cnnkit demo",
) -> Any:
    """The demo page for ``predictor`` as a ``gradio.Blocks`` (not launched).

    API endpoints (for ``gradio_client``): ``/predict_image`` (an image file) and, for digit
    models, ``/predict_drawing`` (an image-editor value). Both return the top-``topk``
    classes (a ``gr.Label``), the model's input image, the Grad-CAM overlay (None for
    ONNX models or with ``gradcam=False``) and the verdict (Markdown: empty, or
    :data:`NONE_OF_THESE` when the image looks like none of the classes).

    Args:
        predictor: the model (PyTorch or ONNX Runtime) and its preprocessing.
        examples: (image, class name) pairs offered as clickable examples.
        topk: classes shown.
        gradcam: show a Grad-CAM overlay when the predictor has a PyTorch model.
        max_pixels: images with more pixels are refused with a message.
        title: the page's title.

    Raises:
        CnnkitError: gradio is not installed.
    """
    gr = _gradio()
    model = DemoModel(predictor, topk=topk, gradcam=gradcam, max_pixels=max_pixels)
    digits = is_digit_model(predictor)
    with page_class(gr)(title=title, analytics_enabled=False) as demo:
        gr.Markdown(_intro(title, predictor.class_names, digits))
        with gr.Row():
            with gr.Column():
                sketch, draw, upload, send = _input_panel(gr, digits)
                examples_column = gr.Column()
            with gr.Column():
                outputs = _output_panel(gr, model)
        files = OutputFiles(Path(outputs[1].GRADIO_CACHE) / "cnnkit-outputs")
        # one concurrency group: the page's events together run at most the queue's
        # concurrency limit of predictions at once (see launch)
        if digits:
            draw.click(_guarded(gr, model.drawing, files), sketch, outputs, api_name="predict_drawing",
                       concurrency_id=MODEL_GROUP)  # fmt: skip
        gr.on(
            [send.click, upload.upload],
            _guarded(gr, model.upload, files),
            inputs=upload,
            outputs=outputs,
            api_name="predict_image",
            # Gradio's preprocessing would open the file with PIL itself (a zero-byte file, a
            # non-image or a 20000x20000 PNG then fail inside Gradio with a generic error):
            # the handler gets the file's payload and cnnkit's loader reads it
            preprocess=False,
            concurrency_id=MODEL_GROUP,
        )
        if examples:
            with examples_column:  # clicking one fills the image input and predicts it
                truth = gr.Textbox(label="class", visible=False)  # the table's second column
                predict = _guarded(gr, model.upload, files)  # gets the example's file path
                gr.Examples(
                    [[image, name] for image, name in examples],
                    inputs=[upload, truth],
                    outputs=outputs,
                    fn=lambda image, _: predict(image),
                    run_on_click=True,
                    cache_examples=False,
                    label="Validation images (click one)",
                )
    return demo


def _output_panel(gr: Any, model: DemoModel) -> list[Any]:
    """[the ranked classes, the image the model saw, the Grad-CAM overlay, the verdict]."""
    said = gr.Markdown(elem_id="verdict")  # above the classes: "none of these?" is read first
    label = gr.Label(num_top_classes=model.topk, label="Prediction", elem_id="prediction")
    seen = gr.Image(label="What the model sees", type="pil", format="png", interactive=False)
    cam = gr.Image(label="Grad-CAM", type="pil", format="png", interactive=False, visible=model.gradcam)
    return [label, seen, cam, said]


def _intro(title: str, names: list[str], digits: bool) -> str:
    shown = ", ".join(names[:12]) + (f" ... ({len(names)} classes)" if len(names) > 12 else "")
    ask = "Draw a digit or upload an image" if digits else "Upload, paste or take a photo"
    return f"## {title}\n{ask}; the model ranks its classes: {shown}."


def _input_panel(gr: Any, digits: bool) -> tuple[Any, Any, Any, Any]:
    """(sketchpad, its button, image input, its button); a sketchpad only for digit models."""
    sketch = draw = None
    if digits:
        with gr.Tab("Draw"):
            sketch = gr.Sketchpad(
                label="Draw a digit (pick the brush first)",
                type="numpy",
                image_mode="RGBA",
                canvas_size=CANVAS,
                brush=gr.Brush(colors=["#000000"], color_mode="fixed", default_size=BRUSH_SIZE),
                layers=False,
                transforms=(),
                elem_id="sketchpad",
            )
            draw = gr.Button("Predict", variant="primary", elem_id="predict-drawing")
    with gr.Tab("Upload") if digits else gr.Column():
        sources = ["upload", "clipboard"] + ([] if digits else ["webcam"])
        # the upload event takes the raw payload (preprocess=False); "filepath" with
        # image_mode=None is what the examples' event gets: the example file's path
        upload = gr.Image(
            label="Image",
            type="filepath",
            image_mode=None,
            sources=sources,
            format="png",
            elem_id="upload",
        )
        send = gr.Button("Predict", variant="primary", elem_id="predict-image")
    return sketch, draw, upload, send


class OutputFiles:
    """The demo's output images as PNG files, each written once under its content's hash.

    Gradio saves a returned PIL image by rewriting, in place, the file named after its
    content; a client still downloading the same image from an earlier answer (two users
    sending one example) then reads it half-written or empty: measured with 16 clients in
    ``bench/serve_load.py``. Here a file is written atomically, and only if it is new, so
    every reader gets the whole file. Gradio serves the folder (inside its cache) as is.

    Args:
        folder: where the files go.
    """

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)

    def __call__(self, image: Image.Image | None) -> str | None:
        """``image`` as the path of its PNG file (None stays None)."""
        if image is None:
            return None
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        data = buffer.getvalue()
        path = self.folder / f"{hashlib.sha256(data).hexdigest()[:32]}.png"
        if not path.exists():
            write_bytes(path, data)
        return str(path)


def _guarded(gr: Any, handler: Callable[[Any], Outputs], files: OutputFiles) -> Callable[[Any], Any]:
    """``handler`` with its images as files and cnnkit's user errors shown as a message on
    the page (no traceback)."""

    def run(value: Any) -> tuple[dict[str, float], str | None, str | None, str]:
        try:
            top, seen, cam, said = handler(value)
        except CnnkitError as exc:
            # the page renders the message as HTML, and it may hold the upload's own file name
            raise gr.Error(html.escape(str(exc), quote=False), print_exception=False) from None
        return top, files(seen), files(cam), said

    return run


def launch(
    demo: Any,
    *,
    host: str = "127.0.0.1",
    port: int = 7860,
    max_file_size: str = MAX_FILE_SIZE,
    concurrency: int = CONCURRENCY,
    queue_size: int = QUEUE_SIZE,
    allowed_paths: Sequence[str | os.PathLike[str]] = (),
) -> str:
    """Start serving ``demo`` on ``host:port`` in the background; local only by default.

    No share link, no telemetry, no server-side rendering (which would need Node), nothing
    printed. Call :func:`wait` to keep the process serving until Ctrl-C. Requests go
    through Gradio's queue: clients that arrive together wait their turn, each told its
    place, and are answered in order.

    Args:
        demo: from :func:`build_demo`.
        host: interface to bind; ``0.0.0.0`` lets everyone on the network use the page, with
            no authentication (the README's threat model).
        port: TCP port, 1-65535.
        max_file_size: uploads larger than this are refused (Gradio's size syntax, e.g. ``10mb``).
        concurrency: requests handled at once; the model itself runs one at a time (see
            :class:`DemoModel`), so more only overlaps the work around it (decoding,
            preprocessing, the images shown).
        queue_size: requests that may wait; one more is refused with "queue is full".
        allowed_paths: folders Gradio serves as they are, beside its own uploads and outputs
            (the studio's copies of its reports); never a folder of the user's files.

    Returns:
        The local URL.

    Raises:
        CnnkitError: the port is taken or the host cannot be bound.
        UsageError: a port outside 1-65535, ``concurrency`` or ``queue_size`` under 1.
    """
    if not PORTS[0] <= port <= PORTS[1]:
        raise UsageError(f"--port must be between {PORTS[0]} and {PORTS[1]}, got {port}")
    if concurrency < 1 or queue_size < 1:
        raise UsageError(f"--concurrency and --queue-size must be at least 1 (got {concurrency}, {queue_size})")
    demo.queue(default_concurrency_limit=concurrency, max_size=queue_size)
    try:
        _, url, _ = demo.launch(
            server_name=host,
            server_port=port,
            share=False,
            quiet=True,
            inbrowser=False,
            prevent_thread_lock=True,
            max_file_size=max_file_size,
            ssr_mode=False,
            mcp_server=False,
            # only cnnkit's own messages (gr.Error) reach a client: the text of any other
            # exception may name files of the server; it is printed here, on the terminal
            show_error=False,
            allowed_paths=[str(Path(p).absolute()) for p in allowed_paths] or None,
        )
    except OSError as exc:
        raise CnnkitError(
            f"cannot serve on {host}:{port} ({str(exc).split('. ')[0]}); "
            "choose another --port or --host"
        ) from None
    return url


CLOSE_GRACE_S = 5.0  # how long Ctrl-C waits for open connections before the process just ends


def wait(demo: Any, before_close: Callable[[], None] | None = None) -> None:
    """Block until Ctrl-C, then close the server, waiting at most :data:`CLOSE_GRACE_S`.

    ``before_close`` runs first (the studio stops its training job there, so the run is
    left resumable).

    A browser tab that still holds a stream open (Gradio's heartbeat) makes the server's
    graceful shutdown wait for it, sometimes for good: after the grace period the process
    ends anyway (nothing is lost: the demo keeps no state).
    """
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        if before_close is not None:
            before_close()
        closer = threading.Thread(target=demo.close, name="cnnkit-serve-close", daemon=True)
        closer.start()
        closer.join(CLOSE_GRACE_S)
        if closer.is_alive():
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)
