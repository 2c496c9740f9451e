"""cnnkit studio's core: a project folder, collecting images, training jobs, the take-away zip.

The Gradio page (``cnnkit studio``) is built on these modules; none of them imports gradio,
and importing this package imports no torch:

* :mod:`cnnkit.studio.project`: :class:`~cnnkit.studio.project.Project`, a folder holding
  ``studio.json``, ``data/<class>/<images>`` (a class-per-folder dataset any cnnkit command
  reads) and ``runs/<run>/`` (normal run folders); adding and deleting classes and images,
  importing a folder, CSV or registered dataset, the quick data check, the runs.
* :mod:`cnnkit.studio.kinds`: the kinds of model in plain words ("photos", "small",
  "digits", "advanced") and the config overrides and ``cnnkit train`` command of each.
* :mod:`cnnkit.studio.jobs`: one background training job per project, its live status, stop.
* :mod:`cnnkit.studio.takeaway`: the zip of a run (checkpoint, ONNX, report, config, command).
"""

from __future__ import annotations
