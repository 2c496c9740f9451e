"""See what a network learned: metrics, figures, the HTML report, explanations, robustness.

Modules (import the one you need; figures need matplotlib, so nothing heavy loads here):

* :mod:`cnnkit.evaluation.metrics`: pure tensor functions (confusion matrix, per-class
  precision/recall/F1, expected calibration error, most confused pairs, top losses).
* :mod:`cnnkit.evaluation.plots`: matplotlib ``Figure`` objects (curves, confusion matrix,
  per-class bars, reliability diagram, image grids) that notebooks show inline.
* :mod:`cnnkit.evaluation.report`: ``report.html`` with every figure embedded.
* :mod:`cnnkit.evaluation.explain`: first-layer kernels, feature maps, Grad-CAM.
* :mod:`cnnkit.evaluation.robustness`: accuracy under FGSM and simple corruptions.
"""
