"""The timing harness: imgconv's stores, kernels and conversion against the classic methods, side by side.

``python -m imgconv bench`` (or ``python -m imgconv.bench``) runs it. The
modules, from input to report:

- ``inputs``: the images measured with (the built-in sample, cached; CIFAR-10; any source);
- ``classic``: the classic methods, done the plain way;
- ``methods``: the :class:`~.methods.Method` registry (``METHODS``, ``register_method``), classic and imgconv;
- ``timing``: warm-up, repeats, a time budget; :class:`~.timing.Rounds` times several sides in turn;
- ``harness``: measurement: the :class:`~.harness.Experiment` registry (``EXPERIMENTS``,
  ``register_experiment``), the grid over groups of methods and cutoffs, the warm-up and repeat policy;
- ``experiments``: the built-in experiments (store, read, random access, disk, kernels, conversion, memory);
- ``loader_bench``: the training loaders (opt-in plug-in); ``peers``: LitData, MosaicML streaming,
  WebDataset and HF datasets beside imgconv's stores (``--peers``, opt-in plug-in);
- ``targets`` and ``targets.toml``: the goal thresholds, as data, and how a run judges them;
- ``kernel_bench``, ``memory``, ``studies``: the kernel comparisons, peak memory of a conversion, the layout studies;
- ``report`` and ``plots``: the table, results.json and results.csv, and the matplotlib plots;
- ``command``: the command's arguments and the run (``add_arguments``, ``run_bench``);
- ``internals``: the imgconv internals the harness uses beyond the public API.

``python -m imgconv.bench.kernel_bench`` and ``python -m imgconv.bench.sample_bench``
run the kernel comparisons and the sample's own figures on their own.

Plugging in
-----------
A plug-in is a module of this package that registers methods and experiments
when imported, named in ``command.PLUGINS`` (one line). It imports what it
measures lazily (inside the functions), so that ``imgconv --help`` never needs
it, and declares it in ``requires`` so that a missing package skips the
method or experiment with a one-line reason instead of failing the run;
``probe`` imports it when a run has chosen it, so that a package that is
installed but broken (a torchvision built for another torch) is skipped
with its import error too.

**A method** (a way to store and read images)::

    from imgconv.bench.methods import Method, register_method

    register_method(Method(
        name="litdata", format="litdata", family="peer", label="LitData",
        title="litdata.optimize / StreamingDataset",
        store=store,              # store(path, images, labels, env) -> None; env.workers, env.npz
        read_all=read_all,        # read_all(path, count, env) -> (images (N,H,W,C) uint8, labels (N,) int64)
        open_reader=open_reader,  # open_reader(path, count) -> object with read_one(i) -> (image, label),
                                  #   read_batch(indices) -> (images, labels), close()
        store_one=None,           # store_one(path, images, labels): only for the one-image experiments
        suffix="",                # how its paths end
        baseline="lmdb",          # its rows get speedup = lmdb time / its time, both run in the same rounds
        requires=("litdata",), install='pip install "imgconv[peers]"',
        probe=probe,              # probe() -> None, or why it cannot run here; after requires is found
        group="peers",            # opt-in: --peers (or --methods peers) adds it
        versions=versions,        # versions() -> {"litdata": "0.2.76", "torch": ...}, without importing
        doc="https://...",        # the documentation it follows; results.json records it
        extras={},                # capabilities of plug-in experiments, by name
    ))

(:mod:`imgconv.bench.peers` registers its five methods this way, with the
helpers of :mod:`imgconv.bench.peers.common`: ``import_probe``,
``versions_of``.)

Each experiment runs the methods that have what it ``needs`` (``store``,
``read_all``, ``open_reader``, ``store_one``, or a name of ``extras``); every
read is compared with the images written, and a wrong pixel or label fails the
run. ``disk`` measures whatever ``store`` wrote at ``path``.

**An experiment**::

    from imgconv.bench.harness import Harness, Trial, experiment

    @experiment("loader", "one shuffled epoch, batches of 256", "alone",
                requires=("torch",), install="pip install torch", default=True,
                sides=("imgconv-lmdb", "torch-folder"), table=None, plot=None, probe=None)
    def loader(harness: Harness) -> list[dict]:
        trials = {"torch-folder": Trial(run, setup=None, check=check, warmup=1, per=count),
                  "imgconv-lmdb": Trial(...)}
        return harness.side_by_side("loader", count, trials, pairs=[("torch-folder", "imgconv-lmdb")])

``grid`` is "alone" (``run(harness) -> rows``, once), "cutoff" or "one"
(``run(harness, method, path, count) -> Trial | rows`` for each method with
what it ``needs``, on the store written at ``path``). A :class:`~.harness.Trial`
says what to time: ``run()`` (timed), ``setup()`` (untimed, before each run),
``check(result)`` (untimed, after each run; raise ``BenchCheckError`` on wrong
data), ``close()``, ``warmup``, ``repeat``, ``per`` and extra row ``fields``.
:meth:`~.harness.Harness.side_by_side` times trials in rounds (each round
runs every side once, back to back), settles the targets of its ``pairs``
(rerunning the two sides alternately) and returns rows; a pair's ratio is
baseline time / method time. :meth:`~.harness.Harness.time` times one thing
alone, :meth:`~.harness.Harness.row` makes a row, ``harness.options`` /
``harness.quick`` / ``harness.cutoffs`` / ``harness.images`` / ``harness.env``
are the run's inputs, and ``harness.parameters[name]`` is recorded in
results.json. ``sides`` lists the names an alone experiment measures that are
not registered methods (so that targets may name them); ``table(results,
title, rows) -> lines`` draws its block of the table (default: the pair table);
``plot(results, out) -> file names`` draws its own plots into ``out``
(matplotlib imported inside; called only when it is installed and plots are
drawn); ``group`` makes it opt-in with the methods of the same group (the
``--GROUP`` flag adds both).

**A target** is a ``[[target]]`` entry of ``targets.toml`` (data, no code):
``what``, ``experiment``, ``method`` (and ``baseline`` when it is not the
method's own), ``images`` (the size it is set for: it is judged only there),
``measure`` ("speedup", "slowdown" or a row field) and ``at_least`` or
``at_most``. A run checks that every target names a registered experiment
and side before it starts.
"""
