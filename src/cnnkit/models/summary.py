"""Layer-by-layer model summary: output shapes, parameters and MACs of every module.

``summarize(model, (C, H, W))`` runs one forward pass of a single image with a forward
hook on every module (found by qualified name, so nesting at any depth is seen) and
counts multiply-accumulates with :class:`torch.utils.flop_counter.FlopCounterMode`.
Unlike torchsummary it works for any input size, nested and shared modules, and tuple
outputs, and its totals are exact: every parameter is counted once, by the first module
that owns it, even when a module or a weight is shared.

Why not torchinfo: it is not a dependency (nor installed beside cnnkit), and its
mult-adds come from per-module formulas (a layer's weight times its output size), so
work done in a ``forward`` with functional calls (``F.conv2d`` on a whitening stem,
attention, a matmul) is not counted; torch's own ``FlopCounterMode`` counts the aten ops
that actually ran. The shapes and parameter counts here are what torchinfo's table
shows, and the rows come back as data (``cnnkit summary --json``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from cnnkit.errors import UsageError

Shape = list[int]


@dataclass
class LayerRow:
    """One module of the model.

    Attributes:
        name: qualified name (``"features.0"``; ``""`` for the model itself).
        type: class name (``"Conv2d"``).
        depth: nesting level (0 for the model, 1 for its children...).
        output_shape: shape of the output of its first call (``[1, 6, 24, 24]``), a list
            of shapes for tuple/list/dict outputs, None if it never ran.
        params: parameter values the module owns itself (``recurse=False``), plus those
            of descendants hidden by the ``depth`` limit; shared parameters count once,
            at the first owner, so the rows add up to the total.
        trainable_params: the part of ``params`` with ``requires_grad``.
        macs: multiply-accumulates its own code performed over all its calls (children
            excluded, unless hidden by the ``depth`` limit); the rows add up to the total.
    """

    name: str
    type: str
    depth: int
    output_shape: Shape | list[Any] | None
    params: int
    trainable_params: int
    macs: int


@dataclass
class ModelSummary:
    """What :func:`summarize` found.

    Attributes:
        rows: one per module in definition order (a shared module once, under its first name).
        total_params: distinct parameter values in the model.
        trainable_params: those with ``requires_grad``.
        frozen_params: the others.
        size_mb: bytes of parameters and buffers / 1e6.
        total_macs: multiply-accumulates for one image (conv and matmul ops; FLOPs / 2).
        input_size: (channels, height, width) of the image the summary was made with.
    """

    rows: list[LayerRow]
    total_params: int
    trainable_params: int
    frozen_params: int
    size_mb: float
    total_macs: int
    input_size: tuple[int, int, int]

    def as_dict(self) -> dict[str, Any]:
        """Plain types only, for JSON."""
        return dataclasses.asdict(self)


def summarize(
    model: nn.Module, input_size: tuple[int, int, int], depth: int | None = None
) -> ModelSummary:
    """Summarise ``model`` from one forward pass of a batch of one ``C x H x W`` image.

    The pass runs in eval mode under ``torch.no_grad`` on the model's device; every
    module's training flag is restored afterwards.

    Args:
        model: any module taking one image batch ``[1, C, H, W]``.
        input_size: (channels, height, width).
        depth: keep rows down to this nesting level (0: the model only); deeper modules
            fold their parameters and MACs into their ancestor at ``depth``. None: all.

    Raises:
        UsageError: the model rejects an input of that size (the message quotes why).
    """
    if depth is not None and depth < 0:
        raise UsageError(f"depth must be 0 or more, got {depth}")
    chans, height, width = (int(v) for v in input_size)
    probe = next(iter(model.parameters()), torch.zeros(()))
    dtype = probe.dtype if probe.is_floating_point() else torch.float32
    x = torch.zeros(1, chans, height, width, device=probe.device, dtype=dtype)
    modules = dict(model.named_modules())  # shared modules once, under their first name
    shapes, macs = _trace(model, modules, x)
    rows, seen = [], set()
    for name, module in modules.items():
        own = [p for p in module.parameters(recurse=False) if id(p) not in seen]
        seen.update(id(p) for p in own)
        depth_of = name.count(".") + 1 if name else 0
        count = sum(p.numel() for p in own)
        count_trainable = sum(p.numel() for p in own if p.requires_grad)
        rows.append(LayerRow(name, type(module).__name__, depth_of, shapes.get(name), count,
                             count_trainable, macs.get(name, 0)))  # fmt: skip
    tensors = {id(t): t for t in (*model.parameters(), *model.buffers())}
    total = sum(row.params for row in rows)
    trainable = sum(row.trainable_params for row in rows)
    return ModelSummary(
        rows=rows if depth is None else _fold(rows, depth),
        total_params=total,
        trainable_params=trainable,
        frozen_params=total - trainable,
        size_mb=sum(t.numel() * t.element_size() for t in tensors.values()) / 1e6,
        total_macs=sum(macs.values()),
        input_size=(chans, height, width),
    )


def as_trained(model: nn.Module, cfg: Any) -> nn.Module:
    """``model`` (rebuilt from a run's checkpoint) with its parameters trainable or frozen
    as the run (config ``cfg``) trained them, so a summary counts the run's trainable and
    frozen parameters: ``--freeze`` trained the head only (the backbone frozen);
    ``--fine-tune E1,E2`` ended training every layer. Changes ``model`` in place."""
    from cnnkit.models.pretrained import BackboneClassifier

    if isinstance(model, BackboneClassifier):
        model.freeze_backbone(bool(cfg.train.freeze) and not cfg.train.fine_tune)
    return model


def _trace(
    model: nn.Module, modules: dict[str, nn.Module], x: torch.Tensor
) -> tuple[dict[str, Any], dict[str, int]]:
    """Run ``model(x)``; return first output shape and own MACs per module name."""
    shapes: dict[str, Any] = {}
    macs: dict[str, int] = {}
    stack: list[list[int]] = []  # per active call: [FLOPs at its start, FLOPs of child calls]
    counter = FlopCounterMode(display=False)

    def pre_hook(module: nn.Module, args: Any) -> None:
        stack.append([counter.get_total_flops(), 0])

    def make_post_hook(name: str):
        def post_hook(module: nn.Module, args: Any, output: Any) -> None:
            start, children = stack.pop()
            inclusive = counter.get_total_flops() - start
            if stack:
                stack[-1][1] += inclusive
            macs[name] = macs.get(name, 0) + (inclusive - children) // 2  # a MAC is 2 FLOPs
            shapes.setdefault(name, _shape(output))

        return post_hook

    handles = []
    for name, module in modules.items():
        handles.append(module.register_forward_pre_hook(pre_hook))
        handles.append(module.register_forward_hook(make_post_hook(name)))
    try:
        with _eval_mode(model), torch.no_grad(), counter:
            model(x)
    except RuntimeError as err:  # conv/pool/linear shape checks
        why = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        size = "x".join(map(str, x.shape[1:]))
        raise UsageError(f"the model does not accept a {size} input: {why}") from None
    finally:
        for handle in handles:
            handle.remove()
    return shapes, macs


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode inside; each module's own training flag restored after (mixed modes survive)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def _shape(output: Any) -> Shape | list[Any] | None:
    """``[1, 10]`` for a tensor; a list of shapes for tuples, lists and dicts; else None."""
    if isinstance(output, torch.Tensor):
        return list(output.shape)
    if isinstance(output, dict):
        output = list(output.values())
    if isinstance(output, (tuple, list)):
        return [_shape(item) for item in output]
    return None


def _fold(rows: list[LayerRow], depth: int) -> list[LayerRow]:
    """Rows down to ``depth``; each deeper row adds its params and MACs to its ancestor there."""
    kept = {row.name: dataclasses.replace(row) for row in rows if row.depth <= depth}
    for row in rows:
        if row.depth > depth:
            ancestor = kept[".".join(row.name.split(".")[:depth])]
            ancestor.params += row.params
            ancestor.trainable_params += row.trainable_params
            ancestor.macs += row.macs
    return list(kept.values())


# ----------------------------------------------------------------------------- formatting


def format_summary(summary: ModelSummary) -> str:
    """A text table (layer indented by depth, type, output shape, params, MACs) and totals."""
    header = ("Layer", "Type", "Output shape", "Params", "MACs")
    body = [
        ("  " * row.depth + (row.name or row.type), row.type, _fmt_shape(row.output_shape),
         f"{row.params:,}" if row.params else "--", _short(row.macs) if row.macs else "--")
        for row in summary.rows
    ]  # fmt: skip
    widths = [max(len(line[i]) for line in (header, *body)) for i in range(len(header))]

    def line(cells: tuple[str, ...]) -> str:
        left = [f"{c:<{w}}" for c, w in zip(cells[:3], widths[:3], strict=True)]
        right = [f"{c:>{w}}" for c, w in zip(cells[3:], widths[3:], strict=True)]
        return "  ".join(left + right).rstrip()

    rule = "-" * len(line(tuple("x" * w for w in widths)))
    macs = summary.total_macs
    macs_text = f"{macs / 1e9:.2f} G" if macs >= 1e9 else f"{macs / 1e6:.2f} M"
    footer = [
        f"Input: {'x'.join(map(str, summary.input_size))} (batch of 1)",
        f"Total params: {summary.total_params:,}",
        f"Trainable params: {summary.trainable_params:,}",
        f"Frozen params: {summary.frozen_params:,}",
        f"Params + buffers size: {summary.size_mb:.2f} MB",
        f"MACs per image: {macs_text}",
    ]
    return "\n".join([line(header), rule, *map(line, body), rule, *footer])


def _fmt_shape(shape: Shape | list[Any] | None) -> str:
    if shape is None:
        return "--"
    if all(isinstance(v, int) for v in shape):
        return str(shape)
    return ", ".join(_fmt_shape(s) for s in shape)


def _short(n: int) -> str:
    """``89_856`` -> ``"89.9K"``."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}"
    return str(n)
