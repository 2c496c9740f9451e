"""``cnnkit explain``: first-layer kernels, feature maps and Grad-CAM of images."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def main(args: Any) -> None:
    """``cnnkit explain CHECKPOINT IMAGE...``: the figures of each image, and its top-5."""
    from cnnkit.evaluation.explain import explain_image
    from cnnkit.inference.loading import load_checkpoint

    loaded = load_checkpoint(args.checkpoint)
    given = Path(args.checkpoint)
    out = Path(args.out) if args.out else (given / "explain" if given.is_dir() else Path("explain"))
    written: set[Path] = set()
    for image in args.images:
        found = explain_image(loaded, image, out, layer=args.layer, target_class=args.target_class)
        names, cam = found.class_names, found.gradcam
        print(f"{image}: Grad-CAM of class {names[cam.class_index]!r} at layer {cam.layer}")
        width = max(len(names[i]) for i, _ in cam.top(5))
        for rank, (index, prob) in enumerate(cam.top(5), 1):
            print(f"  {rank}. {names[index]:<{width}}  {prob:7.2%}")
        for path in found.files:
            if path not in written:
                print(f"  wrote {path}")
                written.add(path)
