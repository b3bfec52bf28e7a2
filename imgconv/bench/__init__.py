"""The timing harness: imgconv's stores, kernels and conversion against the classic methods, side by side.

``python -m imgconv bench`` (or ``python -m imgconv.bench``) runs it; see
:mod:`imgconv.bench.harness`. The modules, source to report:

- ``inputs``: the images measured with (the built-in sample, cached; CIFAR-10; any source);
- ``classic``: the classic methods, done the plain way;
- ``methods``: the registry of storage methods, classic and imgconv;
- ``harness``: the registry of experiments, the grid over methods and cutoffs, the targets, the command;
- ``timing``: warm-up, repeats, a time budget, medians;
- ``kernels``, ``memory``, ``studies``: the kernel comparisons, peak memory of a conversion, the layout studies;
- ``report`` and ``plots``: the table, results.json and results.csv, and the matplotlib plots.
"""
