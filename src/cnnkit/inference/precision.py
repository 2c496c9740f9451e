"""Reduced-precision ONNX models: fp16 by converting the graph, int8 by static quantisation.

Both keep float32 inputs and outputs, so a caller feeds the same normalised images and
reads the same logits whatever the precision (:class:`~cnnkit.inference.backends.OnnxBackend`
needs no change). int8 uses ONNX Runtime's quantisation tools: QDQ format (the form every
runtime reads: ONNX Runtime, OpenVINO, TensorRT), per-channel int8 weights, uint8
activations whose ranges come from running the float32 model over calibration images
(min/max); the logits themselves stay float (see :func:`_float_outputs`). How much
accuracy that costs is measured by the caller on real images (see
:func:`cnnkit.commands.export.export_checkpoint`), never assumed.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from cnnkit.device import cpu_flags
from cnnkit.errors import CnnkitError

CALIBRATION_BATCH = 32  # images per calibration run (a fixed-batch file takes its own size)


def to_fp16(proto: Any) -> Any:
    """The model with float16 weights and arithmetic, float32 input and output.

    Half the file size; faster where the hardware has fp16 arithmetic (GPUs, phones, recent
    ARM); on x86 CPUs without it ONNX Runtime runs fp16 slower than fp32 (measured in
    ``bench/predict_throughput.py``).
    """
    try:
        from onnxconverter_common import float16
    except ImportError:
        raise CnnkitError("--precision fp16 needs onnxconverter-common: pip install 'cnnkit[export]'") from None
    with _quiet():  # the open set's score stays float32: its decisions must match the fp32 file's
        converted = float16.convert_float_to_float16(proto, keep_io_types=True, check_fp16_ready=False,
                                                     node_block_list=known_only_nodes(proto))  # fmt: skip
    return _float32_outputs(converted)


def _float32_outputs(proto: Any) -> Any:
    """Every graph output float32 (the converter leaves ``known`` float16 when the blocked
    nodes before it read the float16 bank): a Cast is added where one is not."""
    from onnx import TensorProto, helper

    for output in proto.graph.output:
        if output.type.tensor_type.elem_type != TensorProto.FLOAT16:
            continue
        half = f"{output.name}_float16"
        for node in proto.graph.node:
            node.output[:] = [half if name == output.name else name for name in node.output]
        proto.graph.node.append(helper.make_node("Cast", [half], [output.name], to=TensorProto.FLOAT,
                                                 name=f"{output.name}_to_float32"))  # fmt: skip
        output.type.tensor_type.elem_type = TensorProto.FLOAT
    return proto


def known_only_nodes(proto: Any) -> list[str]:
    """Names of the nodes that compute only the ``known`` output (the open set's score:
    normalising the features, the similarity to the training bank, its top k), not the
    logits: they stay float32 in fp16 and int8 files, so the known/unknown decisions stay
    the fp32 file's (a rounded bank moves scores near the threshold). Empty without ``known``."""
    outputs = [out.name for out in proto.graph.output]
    if "known" not in outputs:
        return []
    producer = {name: node for node in proto.graph.node for name in node.output}

    def needed(output: str) -> set[int]:
        seen, todo = set(), [output]
        while todo:
            node = producer.get(todo.pop())
            if node is not None and id(node) not in seen:
                seen.add(id(node))
                todo.extend(node.input)
        return seen

    known_only = needed("known") - needed("logits")
    return [node.name for node in proto.graph.node if id(node) in known_only and node.name]


def quantize_int8(proto: Any, calibration: torch.Tensor, notes: list[str]) -> Any:
    """The model statically quantised to int8 (QDQ, per-channel weights), calibrated on
    ``calibration`` (normalised images ``[N, C, H, W]``, the model's own preprocessing).

    ``notes`` gets what the user should know (a pre-processing step that had to be skipped,
    the reduced range used on CPUs without VNNI).

    Raises:
        CnnkitError: onnxruntime is missing, no calibration images, or quantisation failed.
    """
    quantization = _require_quantization()
    if len(calibration) == 0:
        raise CnnkitError("int8 quantisation needs calibration images; none were found")
    import onnx

    reduce_range = not _has_vnni()
    if reduce_range:
        notes.append("this CPU has no VNNI instructions: int8 weights use 7 bits (reduce_range), "
                     "which avoids overflow in its int8 kernels")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="cnnkit-int8-") as tmp:
        source, prepared, quantized = (Path(tmp) / name for name in ("fp32.onnx", "pre.onnx", "int8.onnx"))
        onnx.save(proto, str(source))
        try:  # shape inference and graph folding that make quantisation cover more nodes
            with _quiet():
                quantization.shape_inference.quant_pre_process(str(source), str(prepared))
        except Exception as exc:  # an exotic graph: quantise it as exported
            notes.append(f"int8: pre-processing skipped ({type(exc).__name__}: {str(exc)[:120]})")
            prepared = source
        try:
            with _quiet():
                quantization.quantize_static(
                    str(prepared), str(quantized), _Calibration(calibration, _batch_of(proto)),
                    quant_format=quantization.QuantFormat.QDQ, per_channel=True, reduce_range=reduce_range,
                    activation_type=quantization.QuantType.QUInt8, weight_type=quantization.QuantType.QInt8,
                    calibrate_method=quantization.CalibrationMethod.MinMax,
                    nodes_to_exclude=known_only_nodes(onnx.load(str(prepared))),
                )  # fmt: skip
        except Exception as exc:  # onnxruntime raises many types for graphs it cannot quantise
            raise CnnkitError(f"int8 quantisation failed ({type(exc).__name__}: {str(exc)[:300]}); "
                              "export --precision fp32 or fp16 instead") from None  # fmt: skip
        return _float_outputs(onnx.load(str(quantized)))


def _float_outputs(proto: Any) -> Any:
    """Drop the QuantizeLinear/DequantizeLinear pair that ``quantize_static`` puts on each graph
    output, so the last layer (a QGemm/QLinearConv either way) returns float logits.

    Quantised, the logits take one of 256 values over their range (a step of ~0.1 for a
    trained LeNet): two classes then often tie exactly (16 of the 2,000 embedded MNIST test
    digits), the top-1 falls to the lower class index and the probabilities come in coarse
    steps. Float outputs: no ties, the largest logit error fell from 1.7 to 0.3 there, and
    ONNX Runtime fuses the same number of quantised ops.
    """
    graph = proto.graph
    producer = {name: node for node in graph.node for name in node.output}
    dropped: set[str] = set()
    for output in graph.output:
        pair = _output_pair(graph, producer, output.name)
        if pair is None:
            continue
        source = pair[1].input[0]  # the float tensor the pair rounded: it takes the output's name
        for node in graph.node:
            node.input[:] = [output.name if name == source else name for name in node.input]
            node.output[:] = [output.name if name == source else name for name in node.output]
        for node in pair:
            dropped.update(node.input[1:])  # their scale and zero point
            graph.node.remove(node)
    used = {name for node in graph.node for name in node.input}
    for init in [init for init in graph.initializer if init.name in dropped - used]:
        graph.initializer.remove(init)
    return proto


def _output_pair(graph: Any, producer: dict[str, Any], output: str) -> tuple[Any, Any] | None:
    """``(DequantizeLinear, QuantizeLinear)`` that round a float tensor into graph output ``output``,
    or None (another node makes the output, or the quantised tensor has other readers)."""
    dequant = producer.get(output)
    if dequant is None or dequant.op_type != "DequantizeLinear":
        return None
    quant = producer.get(dequant.input[0])
    if quant is None or quant.op_type != "QuantizeLinear" or quant.input[0] not in producer:
        return None
    readers = [node for node in graph.node if quant.output[0] in node.input]
    return (dequant, quant) if readers == [dequant] else None


class _Calibration:
    """ONNX Runtime's CalibrationDataReader protocol: ``get_next()`` -> one input dict or None."""

    def __init__(self, images: torch.Tensor, batch: int | None) -> None:
        size = batch or CALIBRATION_BATCH
        usable = len(images) - len(images) % size if batch else len(images)  # a fixed batch takes whole chunks
        self.chunks = iter(images[: max(usable, size)].float().cpu().contiguous().split(size))

    def get_next(self) -> dict[str, Any] | None:
        chunk = next(self.chunks, None)
        return None if chunk is None else {"input": chunk.numpy()}


def _batch_of(proto: Any) -> int | None:
    """The model's fixed batch size, or None for a dynamic batch dimension."""
    dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    return dim.dim_value if dim.HasField("dim_value") else None


def _has_vnni() -> bool:
    """x86 CPUs with AVX-512 VNNI or AVX-VNNI; True elsewhere (ARM's int8 dot product is exact)."""
    flags = cpu_flags()
    return flags is None or "avx512_vnni" in flags or "avx_vnni" in flags


def _require_quantization() -> Any:
    try:
        from onnxruntime import quantization
        from onnxruntime.quantization import shape_inference  # noqa: F401  (quant_pre_process lives here)
    except ImportError:
        raise CnnkitError("--precision int8 needs onnxruntime: pip install 'cnnkit[export]'") from None
    return quantization


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The converters' own warnings and log lines (one per node they skip) stay off the
    terminal; what matters to the user, the accuracy, is measured and printed afterwards."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)
