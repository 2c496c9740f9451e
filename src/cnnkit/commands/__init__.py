"""One module per command. Each holds the command's Python function (``train``,
``evaluate_checkpoint``, ``report``...) and its ``main(args)`` for the command line, and
reads top to bottom: check the options, load, do the work, write the result. ``train`` is
the one command in three modules: ``train.py`` (the run as it goes), ``train_run.py`` (what
the run is built from, shared with ``lr-find``) and ``train_confidence.py`` (its last step:
the temperature and the open set fitted on val).

The command line (:mod:`cnnkit.cli`) imports a command's module only when that command
runs, so ``cnnkit --help`` and ``--version`` never import torch.
"""
