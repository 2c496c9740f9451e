"""What a trained CNN looks at: first-layer kernels, feature maps and Grad-CAM heatmaps.

Works on every cnnkit classifier: the own architectures (:class:`ClassifierBase`, trunk
``features``) and timm/torchvision backbones (:class:`BackboneClassifier`, trunk
``backbone``). Layers are named as in ``model.named_modules()`` (``features.3``,
``backbone.blocks.2``). Figures are plain :class:`matplotlib.figure.Figure` objects
(no pyplot global state), so they are safe in threads, notebooks and servers.

Grad-CAM follows Selvaraju et al. (2017): channel weights are the spatial mean of the
class score's gradient with respect to a layer's feature maps; the heatmap is the ReLU
of the weighted sum of those maps, upsampled to the input (each map cell at the centre
of its receptive field, see :func:`cnnkit.evaluation.layers.map_centres`) and scaled to
[0, 1].
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import nn
from torchvision.utils import make_grid

from cnnkit.atomic import atomic_write
from cnnkit.confidence import calibrated
from cnnkit.data.folder import load_image
from cnnkit.data.spec import Preprocess
from cnnkit.data.transforms import eval_transform
from cnnkit.errors import UsageError
from cnnkit.evaluation.layers import (
    conv_stages,
    default_gradcam_layer,
    first_conv,
    get_layer,
    get_layer_output_shape,
    map_centres,
)

if TYPE_CHECKING:
    from cnnkit.inference.loading import LoadedCheckpoint


@dataclass
class GradCamResult:
    """A Grad-CAM heatmap and the prediction it explains.

    Attributes:
        heatmap: ``[H, W]`` in [0, 1] at the input size (all zeros when no location
            raises the class score).
        class_index: the class explained (the prediction unless one was asked for).
        probabilities: calibrated softmax over the classes, ``[num_classes]``.
        layer: the layer whose feature maps were weighted.
    """

    heatmap: torch.Tensor
    class_index: int
    probabilities: torch.Tensor
    layer: str

    def top(self, k: int = 5) -> list[tuple[int, float]]:
        """The ``k`` most probable classes as (index, probability), best first."""
        values, indices = self.probabilities.topk(min(k, self.probabilities.numel()))
        return list(zip(indices.tolist(), values.tolist(), strict=True))


# ----------------------------------------------------------------------------- kernels


def first_conv_kernels(model: nn.Module) -> torch.Tensor:
    """The first conv layer's kernels as one image grid ``[C, H, W]`` in [0, 1].

    Each kernel is min-max scaled on its own. With 3 input channels a kernel is one RGB
    tile (``C`` = 3); otherwise every input channel is its own greyscale tile (``C`` = 1),
    one row per output channel when there are several input channels.
    """
    weight = first_conv(model)[1].weight.detach().float().cpu()  # [out, in, kh, kw]
    out_chans, in_chans = weight.shape[:2]
    if in_chans == 3:
        tiles, per_row = weight, math.ceil(math.sqrt(out_chans))
    else:
        tiles = weight.reshape(out_chans * in_chans, 1, *weight.shape[2:])  # [out*in, 1, kh, kw]
        per_row = math.ceil(math.sqrt(out_chans)) if in_chans == 1 else in_chans
    grid = make_grid(tiles, nrow=per_row, padding=1, normalize=True, scale_each=True, pad_value=1.0)
    return grid if in_chans == 3 else grid[:1]  # make_grid repeats grey tiles into RGB


def kernels_figure(model: nn.Module) -> Figure:
    """The first conv layer's kernels (see :func:`first_conv_kernels`) as a figure."""
    name, conv = first_conv(model)
    grid = first_conv_kernels(model)
    fig = Figure(figsize=(6, 6), layout="constrained")
    ax = fig.add_subplot()
    if grid.shape[0] == 3:
        ax.imshow(grid.permute(1, 2, 0).numpy(), interpolation="nearest")
    else:
        ax.imshow(grid[0].numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    kernel = "x".join(map(str, conv.kernel_size))
    ax.set_title(
        f"{name}: {conv.out_channels} kernels {kernel} over {conv.in_channels} input channel(s)"
    )
    return fig


# ----------------------------------------------------------------------------- feature maps


def feature_maps(
    model: nn.Module, image: torch.Tensor, layers: list[str]
) -> dict[str, torch.Tensor]:
    """Each layer's output for one image, ``{name: [C', H', W']}`` (in eval mode, no grad).

    Args:
        model: the classifier.
        image: one normalised image ``[1, C, H, W]``.
        layers: layer names (e.g. from :func:`conv_stages`); each must give a 4-D output.
    """
    modules = {name: get_layer(model, name, tuple(image.shape[-2:])) for name in layers}
    maps: dict[str, torch.Tensor] = {}

    def recorder(name: str):
        def hook(module: nn.Module, inputs, output) -> None:
            # clone: an in-place op later in the network must not change the stored maps
            maps[name] = output[0].detach().float().cpu().clone()

        return hook

    handles = [m.register_forward_hook(recorder(n)) for n, m in modules.items()]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(image.to(_device(model)))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    for name in layers:
        if name not in maps or maps[name].dim() != 3:
            raise UsageError(
                f"layer {name!r} gives no feature maps (not used, or not a [C, H, W] output)"
            )
    return {name: maps[name] for name in layers}


def feature_maps_figure(maps: dict[str, torch.Tensor], max_channels: int = 16) -> Figure:
    """One row per layer: its first ``max_channels`` maps, each min-max scaled on its own."""
    fig = Figure(
        figsize=(max(6.0, 0.75 * max_channels), 1.1 * len(maps) + 0.4), layout="constrained"
    )
    axes = fig.subplots(len(maps), 1, squeeze=False)[:, 0]
    for ax, (name, fmap) in zip(axes, maps.items(), strict=True):
        shown = fmap[:max_channels].unsqueeze(1)  # [n, 1, H', W']
        # NaN padding: matplotlib leaves it blank between the maps
        grid = make_grid(
            shown, nrow=max_channels, padding=1, normalize=True, scale_each=True, pad_value=math.nan
        )
        ax.imshow(grid[0].numpy(), cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
        ax.set_axis_off()
        size = "x".join(str(v) for v in fmap.shape)
        cut = f", first {max_channels}" if fmap.shape[0] > max_channels else ""
        ax.set_title(f"{name}  [{size}]{cut}", fontsize=8, loc="left")
    return fig


# ----------------------------------------------------------------------------- Grad-CAM


def grad_cam(
    model: nn.Module, image: torch.Tensor, target_class: int | None = None, layer: str | None = None,
    temperature: float = 1.0,
) -> GradCamResult:
    """Grad-CAM heatmap of ``target_class`` (default: the prediction) for one image.

    The layer's output is detached and made a leaf that requires grad, so gradients
    reach it even when the backbone is frozen (``requires_grad=False``); parameters'
    ``.grad`` are never touched. The model runs in eval mode; its mode is restored.

    Args:
        model: the classifier.
        image: one normalised image ``[1, C, H, W]``.
        target_class: class index to explain.
        layer: layer name (default: :func:`default_gradcam_layer`).
        temperature: the model's fitted temperature: the probabilities shown are calibrated
            (:func:`cnnkit.confidence.calibrated`).

    Raises:
        UsageError: unknown layer, a layer without 4-D output, or a class out of range.
    """
    size = tuple(image.shape[-2:])
    name = layer if layer is not None else default_gradcam_layer(model, size)
    module = get_layer(model, name, size)
    captured: dict[str, torch.Tensor] = {}

    def hook(module: nn.Module, inputs, output):
        if not isinstance(output, torch.Tensor) or output.dim() != 4:
            return None
        captured["maps"] = output.detach().requires_grad_(True)  # [1, C', H', W'], a leaf
        return captured["maps"].clone()  # the rest of the network may work in place on it

    handle = module.register_forward_hook(hook)
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            logits = model(image.to(_device(model)))  # [1, num_classes]
            probs = calibrated(logits.detach(), temperature)[0].cpu()
            index = (
                int(probs.argmax())
                if target_class is None
                else _class_index(target_class, probs.numel())
            )
            if "maps" not in captured:
                stages = ", ".join(conv_stages(model, size))
                raise UsageError(f"layer {name!r} gives no feature maps; conv stages: {stages}")
            maps = captured["maps"]
            (grads,) = torch.autograd.grad(logits[0, index], maps)  # [1, C', H', W']
    finally:
        handle.remove()
        model.train(was_training)
    weights = grads.float().mean(dim=(2, 3), keepdim=True)  # [1, C', 1, 1]
    cam = F.relu((weights * maps.detach().float()).sum(dim=1, keepdim=True))  # [1, 1, H', W']
    cam = _to_input(cam.cpu(), map_centres(model, name, size), size)  # [H, W]
    cam = cam - cam.min()
    peak = cam.max()
    heatmap = cam / peak if peak > 0 else torch.zeros_like(cam)
    return GradCamResult(heatmap, index, probs, name)


def _to_input(
    cam: torch.Tensor, centres: tuple[tuple[float, float], ...], size: tuple[int, int]
) -> torch.Tensor:
    """Bilinear upsampling of ``[1, 1, H', W']`` to ``[H, W]`` with each map cell placed at
    the centre of its receptive field (see :func:`map_centres`); edge values beyond."""
    coords = []
    for (start, step), cells, pixels in zip(centres, cam.shape[-2:], size, strict=True):
        position = (torch.arange(pixels, dtype=torch.float32) - start) / step  # in map cells
        coords.append(position * 2 / (cells - 1) - 1 if cells > 1 else torch.zeros(pixels))
    grid_y, grid_x = torch.meshgrid(coords[0], coords[1], indexing="ij")
    grid = torch.stack([grid_x, grid_y], dim=-1).unsqueeze(0)  # [1, H, W, 2], x first
    out = F.grid_sample(cam, grid, mode="bilinear", padding_mode="border", align_corners=True)
    return out[0, 0]


def _class_index(target: int, num_classes: int) -> int:
    if not 0 <= target < num_classes:
        raise UsageError(
            f"class index {target} out of range; "
            f"the model has {num_classes} classes (0-{num_classes - 1})"
        )
    return target


def _device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def grad_cam_figure(
    image: torch.Tensor, result: GradCamResult, class_names: list[str], topk: int = 5
) -> Figure:
    """The heatmap over the image (jet, alpha 0.45) beside the top-``topk`` predictions.

    Args:
        image: display image in [0, 1], ``[H, W]`` (grey) or ``[H, W, 3]``, the input size.
        result: from :func:`grad_cam`.
        class_names: index -> name.
        topk: predictions listed.
    """
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax_img, ax_text = fig.subplots(1, 2, width_ratios=[3, 2])
    shown = image.detach().cpu().numpy()
    ax_img.imshow(shown, cmap="gray" if shown.ndim == 2 else None, vmin=0, vmax=1)
    ax_img.imshow(result.heatmap.numpy(), cmap="jet", alpha=0.45, vmin=0, vmax=1)
    ax_img.set_axis_off()
    ax_img.set_title(f"Grad-CAM: {class_names[result.class_index]} ({result.layer})", fontsize=9)
    ax_text.set_axis_off()
    lines = [
        f"{rank}. {class_names[i]}  {p:.1%}" for rank, (i, p) in enumerate(result.top(topk), 1)
    ]
    text = f"top-{len(lines)} predictions\n\n" + "\n".join(lines)
    ax_text.text(0.0, 0.95, text, va="top", ha="left", family="monospace", fontsize=10,
                 transform=ax_text.transAxes)  # fmt: skip
    return fig


# ----------------------------------------------------------------------------- one image


@dataclass
class Explanation:
    """What :func:`explain_image` wrote and found.

    Attributes:
        files: the PNG files written (kernels, feature maps, Grad-CAM).
        gradcam: the Grad-CAM result (prediction, probabilities, layer).
        class_names: index -> name, for reading ``gradcam``.
    """

    files: list[Path]
    gradcam: GradCamResult
    class_names: list[str]


def explain_image(
    loaded: LoadedCheckpoint,
    image_path: str | Path,
    out_dir: str | Path,
    layer: str | None = None,
    target_class: int | str | None = None,
) -> Explanation:
    """Write ``kernels.png``, ``<stem>_features.png`` and ``<stem>_gradcam.png`` for one image.

    The image goes through the checkpoint's own preprocessing (mode, size, mean/std).

    Args:
        loaded: from :func:`cnnkit.load_checkpoint`.
        image_path: the image file.
        out_dir: created if missing; files are replaced atomically.
        layer: Grad-CAM layer (default: :func:`default_gradcam_layer`); also shown among
            the feature maps.
        target_class: class name or index to explain (default: the prediction).

    Raises:
        ImageLoadError: the image cannot be decoded (exit code 1 on the command line).
        UsageError: unknown layer or class (the message lists the valid ones).
    """
    model, names = loaded.model, loaded.class_names
    pre = loaded.preprocess
    index = resolve_class(target_class, names)
    layers = conv_stages(model, pre.input_size)
    if layer is not None:
        get_layer_output_shape(model, layer, pre.input_size)  # a wrong name fails before any work
        if layer not in layers:
            layers.append(layer)
    picture = load_image(image_path, "L" if pre.channels == 1 else "RGB")
    x = eval_transform(pre)(picture).unsqueeze(0)  # [1, C, H, W], normalised
    result = grad_cam(model, x, index, layer, temperature=loaded.checkpoint.temperature)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = Path(image_path).stem
    figures = {
        "kernels.png": kernels_figure(model),
        f"{stem}_features.png": feature_maps_figure(feature_maps(model, x, layers)),
        f"{stem}_gradcam.png": grad_cam_figure(display_image(x[0], pre), result, names),
    }
    files = [save_figure(fig, out_dir / name) for name, fig in figures.items()]
    return Explanation(files, result, names)


def resolve_class(target: int | str | None, class_names: list[str]) -> int | None:
    """A class given by name or index -> index (names win: MNIST's classes are "0".."9")."""
    if target is None or isinstance(target, int):
        return None if target is None else _class_index(target, len(class_names))
    if target in class_names:
        return class_names.index(target)
    if target.lstrip("-").isdigit():
        return _class_index(int(target), len(class_names))
    shown = ", ".join(class_names[:20]) + (
        f" ... ({len(class_names)} in all)" if len(class_names) > 20 else ""
    )
    raise UsageError(f"unknown class {target!r}; classes: {shown} (or an index)")


def display_image(x: torch.Tensor, pre: Preprocess) -> torch.Tensor:
    """A normalised ``[C, H, W]`` input back on the [0, 1] scale: ``[H, W]`` or ``[H, W, 3]``."""
    mean = torch.tensor(pre.mean).view(-1, 1, 1)
    std = torch.tensor(pre.std).view(-1, 1, 1)
    img = (x.detach().cpu().float() * std + mean).clamp(0, 1)
    return img[0] if img.shape[0] == 1 else img.permute(1, 2, 0)


def save_figure(fig: Figure, path: Path, dpi: int = 120) -> Path:
    """Save as PNG atomically (:mod:`cnnkit.atomic`): never a half-written file."""
    return atomic_write(path, lambda handle: fig.savefig(handle, format="png", dpi=dpi))
