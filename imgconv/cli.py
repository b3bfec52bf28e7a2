"""The ``imgconv`` command line: one ``cmd_*`` function per subcommand.

``main(argv=None)`` parses the arguments, runs the command and returns the
exit status: 0 on success, 1 when the data or the files are at fault (one
line on stderr, no traceback), 2 for a usage error. Subcommands are
registered in ``COMMANDS``; each entry adds its arguments to a parser and
names the function that runs it.
"""
import argparse
import json
import os
import sys
import time
import traceback
from collections import namedtuple
from contextlib import contextmanager

from . import __version__, stores
from .convert import DEFAULT_BATCH_SIZE, Interrupted, convert, default_workers
from .errors import ImgconvError, UsageError
from .sample import MIN_COUNT, write_sample
from .verify import store_info, verify_store

EXIT_OK, EXIT_DATA, EXIT_USAGE = 0, 1, 2

Command = namedtuple("Command", "name help add_arguments run")
Command.__doc__ = "A subcommand: its name, one-line help, a function adding its arguments, and the cmd_* that runs it."


def _count(text):
    try:
        value = int(text.replace("_", "").replace(",", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < MIN_COUNT:
        raise argparse.ArgumentTypeError(
            f"the sample needs at least {MIN_COUNT} images (one per batch file), got {value}"
        )
    return value


def _seed(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"the seed must be 0 or more, got {value}")
    return value


def _examples(parser, text):
    """Show ``text`` (example command lines) under the parser's help, as written."""
    parser.epilog = text
    parser.formatter_class = argparse.RawDescriptionHelpFormatter


def _add_sample_arguments(parser):
    _examples(parser, "examples:\n  python -m imgconv sample data --count 10000\n"
                      "  python -m imgconv convert data/cifar-10-python.tar.gz train.lmdb")
    parser.add_argument("directory", help="where to write the dataset (created if needed)")
    parser.add_argument("--count", type=_count, default=60000, help="number of images (default 60000, like CIFAR-10)")
    parser.add_argument("--seed", type=_seed, default=0, help="generator seed (default 0); same seed, same files")
    parser.add_argument(
        "--no-archives", action="store_true", help="write the batch directories only, not the .tar.gz files"
    )


def cmd_sample(args):
    """Write the built-in sample dataset in the CIFAR-10 formats and say what was written."""
    start = time.perf_counter()
    written = write_sample(args.directory, args.count, args.seed, archives=not args.no_archives)
    print(
        f"wrote {written.count} images ({written.train} train, {written.test} test, seed {args.seed}) "
        f"in {time.perf_counter() - start:.1f} s:"
    )
    print(f"  {written.python_dir}  python batches")
    print(f"  {written.binary_dir}  binary batches")
    for archive in (written.python_archive, written.binary_archive):
        if archive is not None:
            print(f"  {archive}")
    return EXIT_OK


def _positive(text, allow_zero=False):
    try:
        value = int(text.replace("_", "").replace(",", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < (0 if allow_zero else 1):
        raise argparse.ArgumentTypeError(f"must be {'0 or more' if allow_zero else 'at least 1'}, got {value}")
    return value


def _workers(text):
    return _positive(text, allow_zero=True)


def _size(text):
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not WIDTHxHEIGHT: {text!r}") from None
    if width < 1 or height < 1:
        raise argparse.ArgumentTypeError(f"width and height must be at least 1, got {text!r}")
    return width, height


def _level(text):
    value = _positive(text, allow_zero=True)
    if value > 9:
        raise argparse.ArgumentTypeError(f"a compression level is 0..9, got {value}")
    return value


CONVERT_EXAMPLE = """examples:
  python -m imgconv sample data
  python -m imgconv convert data/cifar-10-python.tar.gz cifar-train.lmdb
  python -m imgconv convert photos/ photos.h5 --resize 64x64 --resize-policy crop --workers 2
  python -m imgconv convert data/cifar-10-batches-py cifar-all --split all --png-level 1
  python -m imgconv convert data/cifar-10-python.tar.gz cifar-train.lmdb --resume   # after an interruption

An interrupted conversion (Ctrl-C, kill, a killed worker) leaves nothing at DEST; what it
wrote stays in .DEST.imgconv-partial beside it until a run with --resume continues it or
one with --overwrite discards it. Every format resumes from what it has safely on disk
(PNG: every image; LMDB: its last transaction, every 16 MiB; HDF5: its last flushed 4 MiB);
an HDF5 file that HDF5 cannot reopen is discarded, with a message, and written again.
"""


def _add_convert_arguments(parser):
    _examples(parser, CONVERT_EXAMPLE)
    parser.add_argument("source", help="a CIFAR directory or .tar.gz, an image folder, a .npy or .npz file")
    parser.add_argument("dest", help="the store to write: *.lmdb, *.h5/*.hdf5, or a directory for a PNG folder")
    parser.add_argument("--format", choices=("png", "lmdb", "hdf5"), help="the store format (default: from DEST)")
    parser.add_argument("--workers", type=_workers, default=None,
                        help=f"worker processes (default: one per CPU, here {default_workers()}; 0: no pool)")
    parser.add_argument("--batch-size", type=_positive, default=DEFAULT_BATCH_SIZE,
                        help=f"images per batch sent to a worker (default {DEFAULT_BATCH_SIZE})")
    parser.add_argument("--limit", type=_workers, default=None, help="convert the first N images only")
    parser.add_argument("--split", choices=("train", "test", "all"), default="train",
                        help="CIFAR and NumPy: which part (default train)")
    parser.add_argument("--label-kind", choices=("fine", "coarse"), default="fine",
                        help="CIFAR-100: fine (default) or coarse labels")
    parser.add_argument("--mode", choices=("RGB", "L", "RGBA"), default="RGB",
                        help="image folders: the channel layout (default RGB)")
    parser.add_argument("--resize", type=_size, metavar="WxH", help="image folders: make every image WxH")
    parser.add_argument("--resize-policy", choices=("stretch", "crop"), default="stretch",
                        help="stretch, or scale the shorter side and centre-crop (default stretch)")
    parser.add_argument("--labels-csv", metavar="CSV", help="image folders: labels for a flat folder")
    parser.add_argument("--max-pixels", type=_positive, default=None, metavar="N",
                        help="image folders: refuse an image of more than N pixels, a decompression bomb "
                             "(default: Pillow's limit, 89,478,485); refused images follow --on-error")
    parser.add_argument("--on-error", choices=("fail", "skip"), default="fail",
                        help="an unreadable image stops the conversion (default) or is skipped and reported")
    parser.add_argument("--shuffle", action="store_true", help="write the images in a random order")
    parser.add_argument("--seed", type=_seed, default=0, help="the seed of --shuffle (default 0)")
    parser.add_argument("--png-level", type=_level, default=None, help="PNG folder: zlib level 0..9")
    parser.add_argument("--hdf5-chunk", type=_positive, default=None, metavar="N", help="HDF5: images per chunk")
    parser.add_argument("--hdf5-compression", choices=("gzip", "lzf"), default=None, help="HDF5: compression")
    parser.add_argument("--hdf5-level", type=_level, default=None, help="HDF5: gzip level 0..9")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace DEST if it exists, and discard what an interrupted conversion left")
    parser.add_argument("--resume", action="store_true",
                        help="continue the interrupted conversion to DEST (same SOURCE and options) from its last "
                             "batch on disk; without one, convert from the start")
    parser.add_argument("--quiet", action="store_true", help="no progress bar and no summary")


# Each store option of the command line: (flag, the writer's keyword, the format it belongs to).
_STORE_FLAGS = (
    ("--png-level", "png_level", "compress_level", "png"),
    ("--hdf5-chunk", "hdf5_chunk", "chunk_images", "hdf5"),
    ("--hdf5-compression", "hdf5_compression", "compression", "hdf5"),
    ("--hdf5-level", "hdf5_level", "compression_level", "hdf5"),
)


def _store_options(args):
    """The writer options the flags ask for; UsageError for a flag of another format than DEST's."""
    fmt = args.format or stores.format_for_path(args.dest)
    options = {}
    for flag, attribute, keyword, flag_format in _STORE_FLAGS:
        value = getattr(args, attribute)
        if value is None:
            continue
        if flag_format != fmt:
            raise UsageError(f"{flag} applies to {flag_format} stores, and {args.dest} is written as {fmt}")
        options[keyword] = value
    return options


@contextmanager
def _progress(args, path):
    """A ``progress(done, total)`` callback drawing a tqdm bar on stderr (images per
    second, time left); silent with --quiet or when stderr is not a terminal."""
    bar = None
    if not args.quiet and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(unit="img", unit_scale=True, dynamic_ncols=True, file=sys.stderr,
                   desc=os.path.basename(os.path.abspath(path)))

    def update(done, total):
        if bar is not None:
            bar.total = total
            bar.update(done - bar.n)

    try:
        yield update
    finally:
        if bar is not None:
            bar.close()


def _human_bytes(count):
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1000 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000


def cmd_convert(args):
    """Convert SOURCE into the store DEST through a pool of worker processes."""
    with _progress(args, args.dest) as progress:
        result = convert(
            args.source, args.dest, format=args.format, workers=args.workers, batch_size=args.batch_size,
            limit=args.limit, shuffle=args.shuffle, seed=args.seed, overwrite=args.overwrite, resume=args.resume,
            progress=progress,
            store_options=_store_options(args), split=args.split, label_kind=args.label_kind, mode=args.mode,
            resize=args.resize, resize_policy=args.resize_policy, on_error=args.on_error,
            labels_csv=args.labels_csv, max_pixels=args.max_pixels,
        )
    if result.restart_reason:
        print(f"imgconv convert: {result.restart_reason}", file=sys.stderr)
    if result.skipped:
        print(f"imgconv convert: skipped {len(result.skipped)} unreadable file(s):", file=sys.stderr)
        for skipped in result.skipped:
            print(f"  {skipped.path}: {skipped.reason}", file=sys.stderr)
    if not args.quiet:
        rate = result.count / result.seconds if result.seconds > 0 else 0.0
        resumed = f" (continued after {result.resumed} images kept from the interrupted run)" if result.resumed else ""
        print(f"{result.count} images in {result.seconds:.1f} s ({rate:,.0f} images/s), "
              f"{_human_bytes(result.bytes)} on disk: {result.path} ({result.format}){resumed}")
    return EXIT_OK


def _add_store_argument(parser):
    parser.add_argument("store", help="an imgconv store: PNG folder, *.lmdb or *.h5 (or a classic PNG folder)")


def _add_info_arguments(parser):
    _add_store_argument(parser)
    parser.add_argument("--json", action="store_true", help="print the facts as one JSON object, for scripts")
    _examples(parser, "example:\n  python -m imgconv info cifar-train.lmdb --json")


def cmd_info(args):
    """Describe a store: format, count, shape, labels, size on disk, who wrote it."""
    info = store_info(args.store)
    if args.json:
        print(json.dumps(info, indent=2))
        return EXIT_OK
    shape = info["shape"] if isinstance(info["shape"], str) else "x".join(map(str, info["shape"]))
    if "shape_range" in info:
        ranges = info["shape_range"]
        shape += f" (heights {ranges['height']}, widths {ranges['width']}, channels {ranges['channels']})"
    print(f"{info['path']}: {info['format']} store (format version {info['format_version']}), "
          f"written by imgconv {info['imgconv_version'] or 'unknown (classic layout)'}")
    print(f"  images:  {info['count']} of {shape} {info['dtype']}")
    allocated = "unknown" if info["allocated_bytes"] is None else _human_bytes(info["allocated_bytes"])
    print(f"  size:    {_human_bytes(info['data_bytes'])} of data, {allocated} allocated on disk")
    print(f"  source:  {info['source']}")
    print("  labels:  " + ", ".join(f"{name} {count}" for name, count in info["label_counts"].items()))
    return EXIT_OK


def _add_verify_arguments(parser):
    _add_store_argument(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    _examples(parser, "example:\n  python -m imgconv verify cifar-train.lmdb && echo sound")


def cmd_verify(args):
    """Read every image of a store, check every checksum; exit 1 naming each bad image."""
    with _progress(args, args.store) as progress:
        report = verify_store(args.store, progress=progress)
    for problem in report.problems:
        print(f"{report.path}: {problem}")
    for index, reason in report.bad:
        print(f"{report.path}: image {index}: {reason}")
    if report.bad or report.problems:
        print(f"FAILED: {len(report.bad)} bad image(s) of {report.count}, {len(report.problems)} store problem(s): "
              f"{report.path}", file=sys.stderr)
        return EXIT_DATA
    print(f"ok: {report.count} images read and checked in {report.seconds:.2f} s: {report.path} ({report.format})")
    return EXIT_OK


def _add_bench_arguments(parser):
    from .bench import harness

    harness.add_arguments(parser)


def cmd_bench(args):
    """Time imgconv's stores, kernels and conversion against the classic methods; write results and plots."""
    from .bench import harness

    return harness.run_bench(args)


COMMANDS = [
    Command("convert", "convert a dataset into a PNG folder, an LMDB or an HDF5 store", _add_convert_arguments,
            cmd_convert),
    Command("info", "describe a store: format, count, shape, labels, size", _add_info_arguments, cmd_info),
    Command("verify", "read every image of a store and check every checksum", _add_verify_arguments, cmd_verify),
    Command(
        "sample", "write a synthetic dataset in the genuine CIFAR-10 file formats", _add_sample_arguments, cmd_sample
    ),
    Command("bench", "time imgconv's stores against the classic PNG, LMDB and HDF5 methods, with plots",
            _add_bench_arguments, cmd_bench),
]


def build_parser():
    """The argument parser with every registered subcommand."""
    parser = argparse.ArgumentParser(
        prog="imgconv", description="Store image datasets once, read them fast.", epilog=CONVERT_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"imgconv {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS keeps a --debug given before the command from being reset here.
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the full traceback of an error")
    subcommands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        sub = subcommands.add_parser(command.name, help=command.help, description=command.help, parents=[common])
        command.add_arguments(sub)
        sub.set_defaults(run=command.run)
    return parser


def main(argv=None):
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit:  # argparse exits on --help (0) and on usage errors (2)
        return exit.code if isinstance(exit.code, int) else EXIT_USAGE
    try:
        return args.run(args)
    except UsageError as exc:
        print(f"imgconv {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Interrupted as exc:
        print(f"imgconv {args.command}: {exc}", file=sys.stderr)
        return 128 + exc.signum
    except ImgconvError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"imgconv {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_DATA
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"imgconv {args.command}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return EXIT_DATA
    except KeyboardInterrupt:
        print(f"imgconv {args.command}: interrupted", file=sys.stderr)
        return 130
