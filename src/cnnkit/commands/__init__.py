"""One module per command. Each holds the command's Python function (``train``,
``evaluate_checkpoint``, ``report``...) and its ``main(args)`` for the command line, and
reads top to bottom: check the options, load, do the work, write the result.

The command line (:mod:`cnnkit.cli`) imports a command's module only when that command
runs, so ``cnnkit --help`` and ``--version`` never import torch.
"""
