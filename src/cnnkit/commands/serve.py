"""``cnnkit serve``: the Gradio demo of a run, checkpoint or ONNX file, on 127.0.0.1."""

from __future__ import annotations

import os
from typing import Any


def main(args: Any) -> None:
    """Serve until Ctrl-C (the values were checked by :func:`cnnkit.config.validate` of
    :class:`~cnnkit.config.ServeOptions`)."""
    from cnnkit.inference import Predictor
    from cnnkit.inference.loading import example_images
    from cnnkit.serve import build_demo, launch, wait
    from cnnkit.serve.app import check_address

    check_address(args.host, args.port)  # before the model loads: a port in use is one line at once
    predictor = Predictor.load(args.checkpoint, backend=args.backend, device=args.device)
    print(f"backend: {predictor.note}", flush=True)
    onnx = predictor.model is None
    examples = example_images(args.checkpoint, args.examples, args.data_dir) if args.examples and not onnx else []
    demo = build_demo(predictor, examples=examples, topk=args.topk, gradcam=not args.no_gradcam,
                      title=f"cnnkit: {os.path.basename(os.path.normpath(args.checkpoint))}")  # fmt: skip
    url = launch(demo, host=args.host, port=args.port, concurrency=args.concurrency, queue_size=args.queue_size)
    print(f"serving {args.checkpoint} on {url}  (Ctrl-C to stop)", flush=True)
    wait(demo)
