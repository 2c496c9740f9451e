"""The studio page: collect images, train, look at the results, try the model, take it away.

:func:`build_studio` lays out one ``gradio.Blocks`` page in five tabs over a
:class:`~cnnkit.studio.actions.Studio`; every button calls one of its methods, and the
same event is the named API endpoint (``api_name``) a ``gradio_client`` script calls, so
the page and the API share one code path. An action's event returns the method's plain
dict (a hidden ``gr.JSON``: what an API client receives); a private follow-up event turns
that dict into what the page shows (counts, thumbnails, warnings, curves), which API
clients never see nor wait for. Read-only endpoints (``data``, ``train_status``...) are
:func:`gradio.api` functions over the same methods.

Everything the page shows is read from the project folder, so a reload, a closed browser
or a restarted server shows the same classes, images and runs; a training job runs in the
server (:mod:`cnnkit.studio.jobs`) and the page polls it with a ``gr.Timer``. Gradio is
imported only when a page is built.

What a client can reach (the README's threat model): the page is a
:func:`cnnkit.serve.app.page_class` page, so every event refuses a file reference that is not
an upload of its request; every answer and message goes through :meth:`Studio.relative`, so
none names the project folder's absolute path; the project's files are shown as copies in
Gradio's cache (:func:`cnnkit.studio.views.served`); folders are imported only under the
studio's ``import_roots``.
"""

from __future__ import annotations

import functools
import html
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any, NamedTuple

from cnnkit.errors import CnnkitError
from cnnkit.serve.app import BRUSH_SIZE, CANVAS, MODEL_GROUP, OutputFiles, _gradio, page_class
from cnnkit.studio import views
from cnnkit.studio.actions import Studio
from cnnkit.studio.files import MAX_ZIP_BYTES
from cnnkit.studio.project import Project

MAX_UPLOAD = f"{MAX_ZIP_BYTES // 2**20}mb"  # Gradio refuses larger files before they reach the project
POLL_S = 1.0  # seconds between status reads while a job trains
# webcam burst: a frame every 0.5 s while recording. Gradio ends a stream event after its time
# limit and the page, still recording, starts the next one: a burst lasts until Stop is pressed
BURST_EVERY_S, BURST_EVENT_S = 0.5, 10

# The API: every action of the page, by name (the README lists them with their arguments).
ENDPOINTS = ("add_class", "delete_class", "upload", "add_snapshot", "add_drawing", "delete_image", "import_data",
             "data", "images", "kinds", "train", "train_status", "stop", "resume", "runs", "results", "predict",
             "predict_drawing", "download", "command")  # fmt: skip


def build_studio(project: Project, *, topk: int = 5, gradcam: bool = True, title: str | None = None,
                 import_roots: Sequence[str | os.PathLike[str]] | None = None) -> Any:  # fmt: skip
    """The studio page of ``project`` (a ``gradio.Blocks``; nothing is served until launched).

    Args:
        project: from :meth:`cnnkit.studio.project.Project.open`.
        topk: classes a prediction lists.
        gradcam: show a Grad-CAM overlay with predictions.
        title: the page's title (default: ``cnnkit studio: <folder name>``).
        import_roots: the server folders the page may import from (see
            :class:`~cnnkit.studio.actions.Studio`; None: any, empty: registered datasets only).

    Raises:
        CnnkitError: gradio is not installed.
    """
    gr = _gradio()
    studio = Studio(project, topk=topk, gradcam=gradcam, import_roots=import_roots)
    title = title or f"cnnkit studio: {project.root.name}"
    with page_class(gr)(title=title, analytics_enabled=False) as page:
        with gr.Row(equal_height=True):
            gr.Markdown(f"## {html.escape(title)}")  # the folder's name only: clients never see server paths
            run = gr.Dropdown(label="Run (for Look, Try and Take away)", choices=[], allow_custom_value=True,
                              elem_id="run", scale=0, min_width=320)  # fmt: skip
        result = gr.JSON(label="result", visible=False)  # what each action's endpoint returns
        with gr.Tabs():
            with gr.Tab("1 Collect", id="collect"):
                collect = _collect_tab(gr, studio)
            with gr.Tab("2 Train", id="train"):
                train = _train_tab(gr, studio)
            with gr.Tab("3 Look", id="look"):
                look = _look_tab(gr)
            with gr.Tab("4 Try", id="try"):
                trying = _try_tab(gr, topk)
            with gr.Tab("5 Take away", id="takeaway"):
                takeaway = _takeaway_tab(gr)
        ui = SimpleNamespace(run=run, result=result, collect=collect, train=train, look=look, trying=trying,
                             takeaway=takeaway, clean=studio.relative)  # fmt: skip
        _wire_collect(gr, studio, ui)
        _wire_train(gr, studio, ui)
        _wire_runs(gr, studio, ui)
        _wire_api(gr, studio)
        page.load(_guarded(gr, lambda: _page_state(gr, studio), ui.clean), None, _page_outputs(ui),
                  api_visibility="private")  # fmt: skip
    return page


# ---------------------------------------------------------------------------- layout


def _collect_tab(gr: Any, studio: Studio) -> SimpleNamespace:
    with gr.Row():
        with gr.Column(scale=2):
            with gr.Row(equal_height=True):
                new_class = gr.Textbox(label="New class", placeholder="a name, e.g. cat", elem_id="new-class",
                                       scale=3)  # fmt: skip
                add_class = gr.Button("Add class", elem_id="add-class", scale=1)
            with gr.Row(equal_height=True):
                chosen = gr.Dropdown(label="Class", choices=[], allow_custom_value=True, elem_id="class", scale=3)
                delete_class = gr.Button("Delete class", variant="stop", elem_id="delete-class", scale=1)
            with gr.Tab("Upload"):
                files = gr.File(label="Images or a .zip of images", file_count="multiple", type="filepath",
                                elem_id="upload-files")  # fmt: skip
                upload = gr.Button("Add to class", variant="primary", elem_id="add-files")
            with gr.Tab("Webcam"):
                snapshot = gr.Image(label="Snapshot", sources=["webcam"], type="numpy", elem_id="webcam")
                add_snapshot = gr.Button("Add snapshot", variant="primary", elem_id="add-snapshot")
                burst = gr.Image(label=f"Burst: Record adds a frame every {BURST_EVERY_S:g} s until you press Stop",
                                 sources=["webcam"], type="numpy", streaming=True, elem_id="burst")  # fmt: skip
            with gr.Tab("Draw"):
                sketch = _sketchpad(gr, "sketch-collect")
                add_drawing = gr.Button("Add drawing", variant="primary", elem_id="add-drawing")
            with gr.Tab("Import"):
                label, placeholder, note = views.import_help(studio)
                gr.Markdown(note, visible=bool(note), elem_id="import-note")
                source = gr.Textbox(label=label, elem_id="import-source", placeholder=placeholder)
                limit = gr.Number(label="At most this many images per class (0: all)", value=0, precision=0,
                                  minimum=0, elem_id="import-limit")  # fmt: skip
                import_data = gr.Button("Import", variant="primary", elem_id="import")
        with gr.Column(scale=3):
            message = gr.Markdown(elem_id="collect-message")
            counts = gr.Markdown(elem_id="class-counts")
            checks = gr.Markdown(elem_id="data-check")
            gallery = gr.Gallery(label="Images", columns=6, height=330, allow_preview=False, object_fit="cover",
                                 elem_id="gallery")  # fmt: skip
            with gr.Row(equal_height=True):
                picked = gr.Textbox(label="Selected image (click a thumbnail)", elem_id="picked", scale=3)
                delete_image = gr.Button("Delete image", variant="stop", elem_id="delete-image", scale=1)
    return SimpleNamespace(**{k: v for k, v in locals().items() if k not in ("gr", "studio", "label", "placeholder",
                                                                             "note")})  # fmt: skip


def _sketchpad(gr: Any, elem_id: str) -> Any:
    """A black-brush sketchpad as ``cnnkit serve``'s (drawings become MNIST-style digits)."""
    return gr.Sketchpad(label="Draw (pick the brush first)", type="numpy", image_mode="RGBA", canvas_size=CANVAS,
                        brush=gr.Brush(colors=["#000000"], color_mode="fixed", default_size=BRUSH_SIZE),
                        layers=False, transforms=(), elem_id=elem_id)  # fmt: skip


def _train_tab(gr: Any, studio: Studio) -> SimpleNamespace:
    listed = studio.kinds()
    with gr.Row():
        with gr.Column(scale=2):
            kind = gr.Radio([(k["label"], k["key"]) for k in listed["kinds"]], value=listed["default"],
                            label="Kind of model", elem_id="kind")  # fmt: skip
            kind_help = gr.Markdown(views.kind_help(listed, listed["default"]), elem_id="kind-help")
            advanced = "Model name (advanced only: `cnnkit models` lists them; timm:NAME, tv:NAME)"
            model = gr.Textbox(value="", label=advanced, elem_id="model-name")
            with gr.Row():
                epochs = gr.Number(0, label="Epochs (0: the kind's default)", precision=0, minimum=0,
                                   elem_id="epochs")  # fmt: skip
                image_size = gr.Number(0, label="Image size in px (0: the kind's)", precision=0, minimum=0,
                                       elem_id="image-size")  # fmt: skip
            with gr.Row():
                start = gr.Button("Train", variant="primary", elem_id="train")
                stop = gr.Button("Stop", variant="stop", elem_id="stop")
                resume = gr.Button("Continue the run", elem_id="resume")
        with gr.Column(scale=3):
            progress = gr.HTML(views.progress_html({"state": "idle"}), elem_id="train-progress")
            status = gr.Markdown(elem_id="train-status")
            curves = gr.Plot(label="Curves (updated each epoch)", format="png", elem_id="curves")
            command = _command_box(gr, "The same run from a terminal, in the project folder", "train-command")
            log = gr.Textbox(label="Log", lines=6, max_lines=10, autoscroll=True, elem_id="train-log")
    timer = gr.Timer(POLL_S, active=False)
    plotted = gr.State(None)  # (run, epochs) of the curves shown: redrawn only when it changes
    return SimpleNamespace(**{k: v for k, v in locals().items() if k not in ("gr", "studio", "listed", "advanced")})


def _command_box(gr: Any, label: str, elem_id: str) -> Any:
    """A read-only shell box for a ``cnnkit train`` command, its long line wrapped."""
    import inspect

    wrap = {"wrap_lines": True} if "wrap_lines" in inspect.signature(gr.Code).parameters else {}  # newer Gradio
    return gr.Code(label=label, language="shell", interactive=False, lines=2, max_lines=4, elem_id=elem_id, **wrap)


def _look_tab(gr: Any) -> SimpleNamespace:
    summary = gr.Markdown("No trained run yet.", elem_id="results")
    report = gr.HTML(elem_id="report-link")
    figures = {}
    for start in range(0, len(views.FIGURE_LABELS), 2):  # two figures a row
        with gr.Row():
            figures |= {name: _figure(gr, name, label) for name, label in views.FIGURE_LABELS[start:start + 2]}
    return SimpleNamespace(summary=summary, report=report, figures=[figures[name] for name, _ in views.FIGURE_LABELS])


def _figure(gr: Any, name: str, label: str) -> Any:
    return gr.Image(label=label, type="filepath", interactive=False, height=340, elem_id=f"fig-{name}")


def _try_tab(gr: Any, topk: int) -> SimpleNamespace:
    with gr.Row():
        with gr.Column():
            with gr.Tab("Photo"):
                # the raw payload (preprocess=False): cnnkit's loader reads the file, as in `cnnkit serve`
                image = gr.Image(label="Upload, paste or take a photo", type="filepath", image_mode=None, format="png",
                                 sources=["upload", "webcam", "clipboard"], elem_id="try-image")  # fmt: skip
                send = gr.Button("Predict", variant="primary", elem_id="predict-image")
            with gr.Tab("Draw"):
                sketch = _sketchpad(gr, "sketch-try")
                draw = gr.Button("Predict", variant="primary", elem_id="predict-drawing")
        with gr.Column():
            said = gr.Markdown(elem_id="verdict")  # "not sure: none of these?" when the run's open set says so
            label = gr.Label(num_top_classes=topk, label="Prediction", elem_id="prediction")
            with gr.Row():
                seen = gr.Image(label="What the model sees", type="filepath", interactive=False, height=260,
                                elem_id="seen")  # fmt: skip
                cam = gr.Image(label="Grad-CAM", type="filepath", interactive=False, height=260, elem_id="gradcam")
    return SimpleNamespace(image=image, send=send, sketch=sketch, draw=draw, outputs=[label, seen, cam, said])


def _takeaway_tab(gr: Any) -> SimpleNamespace:
    gr.Markdown("The run as a zip: `checkpoints/best.pt`, `model.onnx`, the report, `config.yaml` and the "
                "`cnnkit train` command that reproduces it. Unpacked, the folder works with `cnnkit eval`, "
                "`predict`, `serve` and `train --resume`.")  # fmt: skip
    make = gr.Button("Make the zip", variant="primary", elem_id="make-zip")
    file = gr.File(label="Download", interactive=False, height=90, elem_id="zip")
    command = _command_box(gr, "The exact `cnnkit train` command of this run", "takeaway-command")
    return SimpleNamespace(make=make, file=file, command=command)


# ---------------------------------------------------------------------------- events


def _guarded(gr: Any, handler: Callable[..., Any], clean: Callable[[str], str]) -> Callable[..., Any]:
    """``handler`` with cnnkit's user errors shown as a message on the page (no traceback)
    and returned to API clients as the error's text; every text of its answer and message
    passed through ``clean`` (:meth:`Studio.relative`: no absolute path of the project)."""

    @functools.wraps(handler)  # the signature and type hints: gr.api and the API docs read them
    def run(*args: Any) -> Any:
        try:
            return _cleaned(handler(*args), clean)
        except CnnkitError as exc:
            # the page renders the message as HTML, and it may hold a file's own name
            raise gr.Error(html.escape(clean(str(exc)), quote=False), print_exception=False) from None

    return run


def _cleaned(value: Any, clean: Callable[[str], str]) -> Any:
    """``value`` with ``clean`` applied to every string in it (dicts, lists, tuples); other
    values (component updates, images, figures) as they are."""
    if isinstance(value, str):
        return clean(value)
    if isinstance(value, dict):
        return {key: _cleaned(item, clean) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_cleaned(item, clean) for item in value)
    return value


class _Then(NamedTuple):
    """What shows an action's result on the page: ``fn(result, *inputs)`` fills ``outputs``."""

    fn: Callable[..., Any]
    inputs: list[Any]
    outputs: list[Any]


def _action(gr: Any, trigger: Any, fn: Callable[..., Any], inputs: list[Any], ui: SimpleNamespace, name: str,
            then: _Then, **options: Any) -> Any:  # fmt: skip
    """``trigger`` runs ``fn`` (the public endpoint ``name``: its dict lands in the hidden
    result), then, when it succeeded, the private ``then`` shows that result on the page."""
    event = trigger(_guarded(gr, fn, ui.clean), inputs, ui.result, api_name=name, **options)
    return event.success(_guarded(gr, then.fn, ui.clean), [ui.result, *then.inputs], then.outputs,
                         api_visibility="private")  # fmt: skip


def _collect_outputs(ui: SimpleNamespace) -> list[Any]:
    c = ui.collect
    return [c.message, c.counts, c.checks, c.chosen, c.gallery, c.picked]


def _wire_collect(gr: Any, studio: Studio, ui: SimpleNamespace) -> None:
    c, outputs = ui.collect, _collect_outputs(ui)

    def show(result: dict[str, Any], chosen: str | None) -> list[Any]:
        if result.get("rejected"):
            gr.Warning(html.escape(views.rejected_text(result["rejected"]), quote=False))
        return views.collect_view(gr, studio, result, result.get("class") or chosen)

    events = {}
    for trigger, fn, inputs, name in (
        (c.add_class.click, studio.add_class, [c.new_class], "add_class"),
        (c.new_class.submit, studio.add_class, [c.new_class], None),
        (c.delete_class.click, studio.delete_class, [c.chosen], "delete_class"),
        (c.upload.click, studio.upload, [c.chosen, c.files], "upload"),
        (c.add_snapshot.click, studio.add_snapshot, [c.chosen, c.snapshot], "add_snapshot"),
        (c.add_drawing.click, studio.add_drawing, [c.chosen, c.sketch], "add_drawing"),
        (c.delete_image.click, studio.delete_image, [c.chosen, c.picked], "delete_image"),
        (c.import_data.click, studio.import_data, [c.source, c.limit], "import_data"),
    ):
        options = {} if name else {"api_visibility": "private"}
        events[trigger] = _action(gr, trigger, fn, inputs, ui, name or "add_class_submit",
                                  _Then(show, [c.chosen], outputs), **options)  # fmt: skip
    # the new class's name and the uploaded files are cleared once stored
    for trigger in (c.add_class.click, c.new_class.submit):
        events[trigger].success(lambda: "", None, c.new_class, api_visibility="private", queue=False)
    events[c.upload.click].success(lambda: None, None, c.files, api_visibility="private", queue=False)
    c.burst.stream(_guarded(gr, lambda chosen, frame: views.collect_view(gr, studio, studio.add_snapshot(
        chosen, frame), chosen), ui.clean), [c.chosen, c.burst], outputs, stream_every=BURST_EVERY_S,
        time_limit=BURST_EVENT_S, api_visibility="private", concurrency_limit=1)  # fmt: skip
    c.chosen.input(_guarded(gr, lambda chosen: views.collect_view(gr, studio, studio.data(), chosen), ui.clean),
                   c.chosen, outputs, api_visibility="private")  # fmt: skip

    def picked(event: Any) -> str:
        return views.picked_name(event)

    picked.__annotations__ = {"event": gr.SelectData, "return": str}  # Gradio passes the click by this hint
    c.gallery.select(picked, None, c.picked, api_visibility="private", queue=False)


def _train_outputs(ui: SimpleNamespace) -> list[Any]:
    t = ui.train
    return [t.progress, t.status, t.curves, t.plotted, t.log, t.command, t.timer]


def _wire_train(gr: Any, studio: Studio, ui: SimpleNamespace) -> None:
    t, outputs = ui.train, _train_outputs(ui)

    def show(status: dict[str, Any], plotted: Any) -> list[Any]:
        return views.train_view(gr, status, plotted)

    t.kind.change(lambda key: views.kind_help(studio.kinds(), key), t.kind, t.kind_help, api_visibility="private")
    then = _Then(show, [t.plotted], outputs)
    _action(gr, t.start.click, studio.train, [t.kind, t.epochs, t.image_size, t.model], ui, "train", then)
    _action(gr, t.stop.click, studio.stop, [], ui, "stop", then, queue=False)
    _action(gr, t.resume.click, studio.resume, [ui.run, t.epochs], ui, "resume", then)

    def tick(plotted: Any, current: str | None) -> list[Any]:
        status = studio.train_status()
        shown = views.train_view(gr, status, plotted)
        if status["state"] == "running":
            return [*shown, *[gr.skip()] * (1 + len(_look_outputs(ui)))]
        # the job has just ended: its run is selected, and Look shows what it reached
        run = status.get("run") or current
        return [*shown, views.runs_update(gr, studio, run), *views.look_view(gr, studio, run)]

    t.timer.tick(_guarded(gr, tick, ui.clean), [t.plotted, ui.run], [*outputs, ui.run, *_look_outputs(ui)],
                 api_visibility="private")  # fmt: skip


def _look_outputs(ui: SimpleNamespace) -> list[Any]:
    return [ui.look.summary, ui.look.report, *ui.look.figures, ui.takeaway.command]


def _wire_runs(gr: Any, studio: Studio, ui: SimpleNamespace) -> None:
    trying, away = ui.trying, ui.takeaway
    ui.run.change(_guarded(gr, lambda run: views.look_view(gr, studio, run), ui.clean), ui.run, _look_outputs(ui),
                  api_visibility="private")  # fmt: skip
    files = OutputFiles(Path(trying.outputs[1].GRADIO_CACHE) / "cnnkit-outputs")

    def predict(image: Any, run: str) -> tuple[dict[str, float], str | None, str | None, str]:
        top, seen, cam, said = studio.predict(image, run)
        return top, files(seen), files(cam), said

    def predict_drawing(sketch: Any, run: str) -> tuple[dict[str, float], str | None, str | None, str]:
        top, seen, cam, said = studio.predict_drawing(sketch, run)
        return top, files(seen), files(cam), said

    def download(run: str) -> str:
        return views.served(studio.download(run))  # a copy in Gradio's cache: it serves no project folder

    predict.__doc__, predict_drawing.__doc__ = studio.predict.__doc__, studio.predict_drawing.__doc__
    download.__doc__ = studio.download.__doc__
    trying.send.click(_guarded(gr, predict, ui.clean), [trying.image, ui.run], trying.outputs, api_name="predict",
                      preprocess=False, concurrency_id=MODEL_GROUP)  # fmt: skip
    trying.draw.click(_guarded(gr, predict_drawing, ui.clean), [trying.sketch, ui.run], trying.outputs,
                      api_name="predict_drawing", concurrency_id=MODEL_GROUP)  # fmt: skip
    away.make.click(_guarded(gr, download, ui.clean), ui.run, away.file, api_name="download")


def _wire_api(gr: Any, studio: Studio) -> None:
    """The read-only endpoints (no button of their own): the same methods the page reads."""

    def data() -> dict:
        """The classes, their counts and thumbnails, and the quick data check."""
        return studio.data()

    def images(class_name: str) -> dict:
        """One class's image files, newest first."""
        return studio.images(class_name)

    def kinds() -> dict:
        """The kinds of model and the project's default."""
        return studio.kinds()

    def train_status() -> dict:
        """The latest training job: state, epoch, history, log, command."""
        return studio.train_status()

    def runs() -> list:
        """The project's runs, newest first."""
        return studio.runs()

    def results(run: str) -> dict:
        """A run's validation accuracy, report figures and command (empty run: the newest)."""
        return studio.results(run)

    def command(run: str) -> str:
        """The `cnnkit train` command that reproduces a run (empty: the newest)."""
        return studio.command(run)

    for fn in (data, images, kinds, train_status, runs, results, command):
        gr.api(_guarded(gr, fn, studio.relative), api_name=fn.__name__)


def _page_outputs(ui: SimpleNamespace) -> list[Any]:
    return [*_collect_outputs(ui), *_train_outputs(ui), ui.run, *_look_outputs(ui)]


def _page_state(gr: Any, studio: Studio) -> list[Any]:
    """Everything the page shows, read from the project folder (on every page load)."""
    run = studio.default_run()
    return [*views.collect_view(gr, studio, studio.data(), None), *views.train_view(gr, studio.train_status(), None),
            views.runs_update(gr, studio, run), *views.look_view(gr, studio, run)]  # fmt: skip
