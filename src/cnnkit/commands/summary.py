"""``cnnkit summary``: the layer table of a model name, run folder or checkpoint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cnnkit.errors import UsageError


def main(args: Any) -> None:
    from cnnkit.models.summary import format_summary, summarize

    model, input_size = _target(args)
    summary = summarize(model, input_size, depth=args.depth)
    print(json.dumps(summary.as_dict(), indent=1) if args.json else format_summary(summary))


def _target(args: Any) -> tuple[Any, tuple[int, int, int]]:
    """The model to summarise and its (C, H, W): a checkpoint's, else a fresh build by name."""
    path = Path(args.model)
    if args.model.endswith((".pt", ".pth")) or path.is_file() or (path / "checkpoints").is_dir():
        from cnnkit.inference.loading import load_checkpoint
        from cnnkit.models.summary import as_trained

        if args.num_classes is not None:
            raise UsageError("--num-classes applies to model names; a checkpoint keeps its own")
        loaded = load_checkpoint(path)
        pre = loaded.preprocess
        size = (pre.channels, *pre.input_size)
        return as_trained(loaded.model, loaded.config), tuple(args.input_size or size)
    from cnnkit.models import create_model, load_model_code, model_info

    load_model_code(args.model)  # FILE.py:NAME named here: imported, as asked
    info = model_info(args.model)
    chans, height, width = args.input_size or (info.default_in_chans, *info.default_input_size)
    classes = 10 if args.num_classes is None else args.num_classes
    model = create_model(args.model, classes, in_chans=chans, input_size=(height, width))
    return model, (chans, height, width)

