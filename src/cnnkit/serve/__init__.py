"""The web demo: ``cnnkit serve RUN`` (Gradio).

* :mod:`cnnkit.serve.drawing`: a sketchpad drawing as an MNIST-style 28x28 digit.
* :mod:`cnnkit.serve.app`: :func:`build_demo` (a ``gradio.Blocks`` for a
  :class:`~cnnkit.inference.Predictor`) and :func:`launch`; gradio loads only when a demo
  is built.
"""

from cnnkit.serve.app import build_demo, launch, wait
from cnnkit.serve.drawing import centre_of_mass, mnist_style

__all__ = ["build_demo", "centre_of_mass", "launch", "mnist_style", "wait"]
