"""Using a trained model: :class:`Predictor` (PyTorch or ONNX Runtime) and exporting.

``predictor.py`` turns images into ranked class names with the checkpoint's own
preprocessing; ``export.py`` writes ONNX / TorchScript files that carry class names and
preprocessing, and checks them against PyTorch on real images.
"""

from cnnkit.inference.predictor import Prediction, Predictor, Skipped, expand_inputs

__all__ = ["Prediction", "Predictor", "Skipped", "expand_inputs"]
