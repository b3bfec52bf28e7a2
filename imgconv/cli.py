"""The ``imgconv`` command line: one ``cmd_*`` function per subcommand.

``main(argv=None)`` parses the arguments, runs the command and returns the
exit status: 0 on success, 1 when the data or the files are at fault (one
line on stderr, no traceback), 2 for a usage error. Subcommands are
registered in ``COMMANDS``; each entry adds its arguments to a parser and
names the function that runs it. The options of ``convert`` are not written
here but derived from their declarations (:mod:`imgconv.options`): those of
``convert()`` itself (:func:`convert_options`), of every source kind
(``sources.SOURCE_KINDS``) and of every store format (``stores.FORMATS``).
"""
from __future__ import annotations

import argparse
import difflib
import json
import os
import sys
import time
import traceback
import warnings
from collections import namedtuple
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, Callable, Dict

from . import sources, stores
from ._terminal import escape_for_terminal
from ._version import __version__
from .convert import DEFAULT_BATCH_SIZE, Interrupted, convert, default_workers
from .datasets.convert import sharded_options
from .errors import ImgconvError, OptionError, StalledWorkersWarning, UnknownFormatError, UsageError
from .options import Option, byte_size, seconds, show_byte_size, speak_flags, whole_number
from .pipeline.plan import DEFAULT_BATCH_BYTES
from .pipeline.pool import DEFAULT_STALL_SECONDS
from .sample import MAX_COUNT, MIN_COUNT, write_sample
from .sources import SkippedImageWarning
from .verify import store_info, verify_store

EXIT_OK, EXIT_DATA, EXIT_USAGE = 0, 1, 2

def _print(text: str, file: Any = None) -> None:
    """Print one line of the command's output; names in it are escaped for the terminal (see :mod:`._terminal`)."""
    print(escape_for_terminal(text), file=sys.stdout if file is None else file)


Command = namedtuple("Command", "name help add_arguments run")
Command.__doc__ = "A subcommand: its name, one-line help, a function adding its arguments, and the cmd_* that runs it."


def _count(text: str) -> int:
    value = whole_number(0)(text)
    if value < MIN_COUNT:
        raise ValueError(f"the sample needs at least {MIN_COUNT} images (one per batch file), got {value}")
    if value > MAX_COUNT:
        raise ValueError(f"the sample holds at most {MAX_COUNT} images (10,000 per batch file, as CIFAR-10), "
                         f"got {value}")
    return value


def _argparse_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """``parse`` as argparse wants it: its ValueError message becomes the usage error's."""

    def parse_argument(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse_argument.__name__ = getattr(parse, "__name__", "value")
    return parse_argument


def _examples(parser: argparse.ArgumentParser, text: str) -> None:
    """Show ``text`` (example command lines) under the parser's help, as written."""
    parser.epilog = text
    parser.formatter_class = argparse.RawDescriptionHelpFormatter


def _add_sample_arguments(parser: argparse.ArgumentParser) -> None:
    _examples(parser, "examples:\n  python -m imgconv sample data --count 10000\n"
                      "  python -m imgconv convert data/cifar-10-python.tar.gz train.lmdb")
    parser.add_argument("directory", help="where to write the dataset (created if needed)")
    parser.add_argument("--count", type=_argparse_type(_count), default=60000,
                        help="number of images (default 60000, like CIFAR-10)")
    parser.add_argument("--seed", type=_argparse_type(whole_number(0)), default=0,
                        help="generator seed (default 0); same seed, same files")
    parser.add_argument(
        "--no-archives", action="store_true", help="write the batch directories only, not the .tar.gz files"
    )


def cmd_sample(args: argparse.Namespace) -> int:
    """Write the built-in sample dataset in the CIFAR-10 formats and say what was written."""
    start = time.perf_counter()
    written = write_sample(args.directory, args.count, args.seed, archives=not args.no_archives)
    _print(
        f"wrote {written.count} images ({written.train} train, {written.test} test, seed {args.seed}) "
        f"in {time.perf_counter() - start:.1f} s:"
    )
    _print(f"  {written.python_dir}  python batches")
    _print(f"  {written.binary_dir}  binary batches")
    for archive in (written.python_archive, written.binary_archive):
        if archive is not None:
            _print(f"  {archive}")
    return EXIT_OK


CONVERT_EXAMPLE = """examples:
  python -m imgconv sample data
  python -m imgconv convert data/cifar-10-python.tar.gz cifar-train.lmdb
  python -m imgconv convert photos/ photos.h5 --resize 64x64 --resize-policy crop --workers 2
  python -m imgconv convert data/cifar-10-batches-py cifar-all --split all --png-level 1
  python -m imgconv convert data/cifar-10-python.tar.gz cifar-train.lmdb --resume   # after an interruption
  python -m imgconv convert photos/ photos-shards --format lmdb --shard-size 256MB
  python -m imgconv convert 'parts/*.tar.gz' all-shards.h5 --engine dask --scheduler tcp://head:8786

An interrupted conversion (Ctrl-C, kill, a killed worker) leaves nothing at DEST; what it
wrote stays in .DEST.imgconv-partial beside it until a run with --resume continues it or
one with --overwrite discards it. Every format resumes from what it has safely on disk
(PNG: every image; LMDB: its last transaction, every 16 MiB; HDF5: its last flushed 4 MiB);
an HDF5 file that HDF5 cannot reopen is discarded, with a message, and written again.
"""


def convert_options() -> tuple[Option, ...]:
    """The keyword options of :func:`imgconv.convert` itself, as the command line offers them."""
    return (
        Option("format", choices=tuple(stores.FORMATS), help="the store format (default: from DEST's suffix)"),
        Option("workers", type=whole_number(0), metavar="N",
               help=f"worker processes (default: one per CPU, here {default_workers()}; 0: no pool)"),
        Option("batch_size", type=whole_number(1), default=DEFAULT_BATCH_SIZE, metavar="N",
               help="images per batch sent to a worker, at most"),
        Option("batch_bytes", type=byte_size, default=DEFAULT_BATCH_BYTES, metavar="SIZE", show=show_byte_size,
               help="decoded bytes per batch, at most (at least one image): what bounds memory in flight, "
                    "whatever the images' sizes (e.g. 64M, 1G)"),
        Option("limit", type=whole_number(0), metavar="N", help="convert the first N images only"),
        Option("shuffle", type=bool, help="write the images in a random order"),
        Option("seed", type=whole_number(0), default=0, metavar="S", help="the seed of --shuffle"),
        Option("overwrite", type=bool,
               help="replace DEST if it exists, and discard what an interrupted conversion left"),
        Option("stall_seconds", type=seconds, default=DEFAULT_STALL_SECONDS, metavar="S", show=lambda v: f"{v:g}",
               help="report the worker processes and their states when none has returned a batch for S seconds "
                    "(a stopped or hung worker); only a report: the conversion goes on"),
        Option("resume", type=bool,
               help="continue the interrupted conversion to DEST (same SOURCE and options) from its last batch on "
                    "disk (a sharded dataset: its finished shards); without one, convert from the start"),
        *sharded_options(),
    )


def _add_option(parser: argparse._ActionsContainer, option: Option, help_text: str) -> None:
    """Add ``option``'s flag; it is in the parsed arguments only when given (so "given" is known)."""
    if option.default is not None and not option.switch:
        help_text += f" (default {option.show(option.default)})"
    if option.switch:
        parser.add_argument(str(option.flag), dest=option.dest, action="store_const", const=option.switch_value,
                            default=argparse.SUPPRESS, help=help_text)
    else:
        parser.add_argument(str(option.flag), dest=option.dest, type=_argparse_type(option.type),
                            choices=option.choices, metavar=option.metavar, default=argparse.SUPPRESS, help=help_text)


def _source_help(option: Option) -> str:
    """The help of a source option, saying which kinds of source take it."""
    return f"{' and '.join(kind.label for kind in sources.kinds_taking(option.name))}: {option.help}"


def _add_convert_arguments(parser: argparse.ArgumentParser) -> None:
    _examples(parser, CONVERT_EXAMPLE)
    parser.add_argument("source", nargs="+",
                        help="a CIFAR directory or .tar.gz, an image folder, a .npy or .npz file, a store or sharded "
                             "dataset; several (or a quoted glob such as 'parts/*.tar.gz') are read one after another")
    parser.add_argument("dest", help="the store to write: *.lmdb, *.h5/*.hdf5, or a directory for a PNG folder "
                                     "(with --shard-size or --engine dask: the directory of a sharded dataset)")
    conversion = parser.add_argument_group("conversion")
    for option in convert_options():
        _add_option(conversion, option, option.help)
    conversion.add_argument("--quiet", action="store_true", help="no progress bar and no summary")
    reading = parser.add_argument_group("reading SOURCE (each option applies to the kinds it names)")
    for option in sources.source_options().values():
        if option.cli:
            _add_option(reading, option, _source_help(option))
    writing = parser.add_argument_group("writing DEST (each option applies to one store format, or to all)")
    for option in stores.WRITER_OPTIONS:
        _add_option(writing, option, f"every format: {option.help}")
    for spec in stores.FORMATS.values():
        for option in spec.options:
            if option.cli:
                _add_option(writing, option, f"{spec.name}: {option.help}")


def _given(args: argparse.Namespace, options: Iterable[Option]) -> dict[str, Any]:
    """The options of ``options`` given on the command line, by keyword."""
    return {option.name: getattr(args, option.dest) for option in options if option.cli and hasattr(args, option.dest)}


def _store_options(args: argparse.Namespace, fmt: str) -> dict[str, Any]:
    """The writer options the flags ask for; UsageError for a flag of another format than DEST's."""
    chosen = _given(args, stores.WRITER_OPTIONS)
    for spec in stores.FORMATS.values():
        for name, value in _given(args, spec.options).items():
            if spec.name != fmt:
                flag = next(o.flag for o in spec.options if o.name == name)
                raise UsageError(f"{flag} applies to {spec.name} stores, and {args.dest} is written as {fmt}")
            chosen[name] = value
    return chosen


def _named_options(args: argparse.Namespace) -> dict[str, Option]:
    """The keyword options a library message may name in this command, to be spoken of as flags.

    Those of convert() and of the sources, and those of the store format
    being written (of every format while it is not known yet).
    """
    named = {option.name: option for option in convert_options()}
    named.update(sources.source_options())
    named.update((option.name, option) for option in stores.WRITER_OPTIONS)
    fmt = getattr(args, "store_format", None)
    for spec in stores.FORMATS.values():
        if fmt in (None, spec.name):
            for option in spec.options:
                named.setdefault(option.name, option)
    return named


def _say(args: argparse.Namespace, message: str, named: Iterable[str] = ()) -> None:
    """Print ``message`` on stderr as ``imgconv COMMAND: ...``, in flags rather than keyword names."""
    _print(f"imgconv {args.command}: {speak_flags(message, _named_options(args), named)}", sys.stderr)


@contextmanager
def _progress(args: argparse.Namespace, path: str) -> Iterator[Callable[[int, int | None], None]]:
    """A ``progress(done, total)`` callback drawing a tqdm bar on stderr (images per
    second, time left); silent with --quiet or when stderr is not a terminal."""
    bar = None
    if not args.quiet and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(unit="img", unit_scale=True, dynamic_ncols=True, file=sys.stderr,
                   desc=escape_for_terminal(os.path.basename(os.path.abspath(path))))

    def update(done: int, total: int | None) -> None:
        if bar is not None:
            bar.total = total
            bar.update(done - bar.n)

    try:
        yield update
    finally:
        if bar is not None:
            bar.close()


def _human_bytes(count: float) -> str:
    for unit in ("B", "KB", "MB"):
        if count < 1000:
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    return f"{count:.1f} GB"


def cmd_convert(args: argparse.Namespace) -> int:
    """Convert SOURCE into the store DEST through a pool of worker processes."""
    try:
        fmt = getattr(args, "format", None) or stores.format_for_path(args.dest)
    except UnknownFormatError as exc:
        raise UsageError(str(exc)) from None
    args.store_format = fmt  # the format whose options messages may name
    store_options = _store_options(args, fmt)
    with _progress(args, args.dest) as progress, warnings.catch_warnings():
        # Skipped files are listed below, once; the sources' warnings (workers
        # fork with this filter) would name them again, with a line of imgconv.
        warnings.simplefilter("ignore", SkippedImageWarning)
        warnings.simplefilter("always", StalledWorkersWarning)
        warnings.showwarning = _warning_line(args)
        source = args.source[0] if len(args.source) == 1 else args.source
        result = convert(source, args.dest, progress=progress, store_options=store_options,
                         **_given(args, convert_options()), **_given(args, sources.source_options().values()))
    if result.restart_reason:
        _say(args, result.restart_reason)
    if result.skipped:
        _say(args, f"skipped {len(result.skipped)} unreadable file(s):")
        named = _named_options(args)
        for skipped in result.skipped:
            _print(f"  {skipped.path}: {speak_flags(skipped.reason, named)}", sys.stderr)
    if not args.quiet:
        rate = result.count / result.seconds if result.seconds > 0 else 0.0
        resumed = f" (continued after {result.resumed} images kept from the interrupted run)" if result.resumed else ""
        images = f"{result.count} image{'' if result.count == 1 else 's'}"
        _print(f"{images} in {result.seconds:.1f} s ({rate:,.0f} images/s), "
               f"{_human_bytes(result.bytes)} of data: {result.path} ({result.format}){resumed}")
    return EXIT_OK


def _warning_line(args: argparse.Namespace) -> Callable[..., None]:
    """A ``warnings.showwarning`` printing imgconv's warnings as one line ``imgconv COMMAND: warning: ...``."""
    shown = warnings.showwarning

    def show(message: Warning | str, category: type[Warning], *rest: Any, **kwargs: Any) -> None:
        if issubclass(category, StalledWorkersWarning):
            _say(args, f"warning: {message}")
        else:
            shown(message, category, *rest, **kwargs)

    return show


def _add_store_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("store", help="an imgconv store: PNG folder, *.lmdb or *.h5 (or a classic PNG folder), or "
                                      "a sharded dataset")


def _add_info_arguments(parser: argparse.ArgumentParser) -> None:
    _add_store_argument(parser)
    parser.add_argument("--json", action="store_true", help="print the facts as one JSON object, for scripts")
    _examples(parser, "example:\n  python -m imgconv info cifar-train.lmdb --json")


def cmd_info(args: argparse.Namespace) -> int:
    """Describe a store: format, count, shape, labels, size on disk, who wrote it."""
    info = store_info(args.store)
    if args.json:
        print(json.dumps(info, indent=2))
        return EXIT_OK
    shape = info["shape"] if isinstance(info["shape"], str) else "x".join(map(str, info["shape"]))
    if "shape_range" in info:
        ranges = info["shape_range"]
        shape += f" (heights {ranges['height']}, widths {ranges['width']}, channels {ranges['channels']})"
    kind = (f"sharded dataset of {info['shards']} {info['format']} shards" if "shards" in info
            else f"{info['format']} store")
    _print(f"{info['path']}: {kind} (format version {info['format_version']}), "
           f"written by imgconv {info['imgconv_version'] or 'unknown (classic layout)'}")
    _print(f"  images:  {info['count']} of {shape} {info['dtype']}")
    allocated = "unknown" if info["allocated_bytes"] is None else _human_bytes(info["allocated_bytes"])
    _print(f"  size:    {_human_bytes(info['data_bytes'])} of data, {allocated} allocated on disk")
    _print(f"  source:  {info['source']}")
    _print("  labels:  " + ", ".join(f"{name} {count}" for name, count in info["label_counts"].items()))
    _print(f"  checks:  {_checks_text(info)}")
    return EXIT_OK


def _checks_text(info: Dict[str, Any]) -> str:
    """What a read of the store checks, in words."""
    if not info["checksums"]:
        return "none: the store keeps no checksums, images are read unchecked"
    if info["positions_checked"]:
        return "every image against its CRC32C, at its index"
    return (f"every image against its CRC32C; positions are not checked (format version {info['format_version']}: "
            "an image found where another belongs would be read as that one)")


def _add_verify_arguments(parser: argparse.ArgumentParser) -> None:
    _add_store_argument(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    _examples(parser, "example:\n  python -m imgconv verify cifar-train.lmdb && echo sound")


def cmd_verify(args: argparse.Namespace) -> int:
    """Read every image of a store, check every checksum; exit 1 naming each bad image."""
    with _progress(args, args.store) as progress:
        report = verify_store(args.store, progress=progress)
    for problem in report.problems:
        _print(f"{report.path}: {problem}")
    for index, reason in report.bad:
        _print(f"{report.path}: image {index}: {reason}")
    if report.unlisted:
        _print(f"{report.path}: and {report.unlisted} more bad image(s), not listed")
    if report.bad or report.problems:
        _print(f"FAILED: {len(report.bad) + report.unlisted} bad image(s) of {report.count}, "
               f"{len(report.problems)} store problem(s): {report.path}", sys.stderr)
        return EXIT_DATA
    _print(f"ok: {report.count} images read and checked in {report.seconds:.2f} s: {report.path} ({report.format})")
    return EXIT_OK


def _add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    from .bench import command

    command.add_arguments(parser)


def cmd_bench(args: argparse.Namespace) -> int:
    """Time imgconv's stores, kernels and conversion against the classic methods; write results and plots."""
    from .bench import command

    return command.run_bench(args)


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


def build_parser() -> argparse.ArgumentParser:
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
        sub.set_defaults(run=command.run, command_parser=sub)
    return parser


def _unrecognized(parser: argparse.ArgumentParser, unknown: list[str]) -> str:
    """The usage error for arguments ``parser`` does not know, with the nearest option of a mistyped one."""
    flags = [flag for action in parser._actions for flag in action.option_strings]
    mistyped = [argument for argument in unknown if argument.startswith("-")]
    nearest = []
    for argument in mistyped:
        near = difflib.get_close_matches(argument.split("=", 1)[0], flags, n=1, cutoff=0.6)
        if near:
            nearest.append((argument, near[0]))
    message = f"unrecognized arguments: {' '.join(unknown)}"
    if len(mistyped) == 1 and nearest:
        return f"{message} (did you mean {nearest[0][1]}?)"
    if nearest:
        return f"{message} (did you mean {', '.join(f'{near} for {argument}' for argument, near in nearest)}?)"
    return message


def main(argv: list[str] | None = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    parser = build_parser()
    try:
        args, unknown = parser.parse_known_args(argv)
        if unknown:  # said by the subcommand, with its usage, not by the top level with its own
            args.command_parser.error(escape_for_terminal(_unrecognized(args.command_parser, unknown)))
    except SystemExit as exit:  # argparse exits on --help (0) and on usage errors (2)
        return exit.code if isinstance(exit.code, int) else EXIT_USAGE
    try:
        return args.run(args)
    except UsageError as exc:
        _say(args, f"error: {exc}")
        return EXIT_USAGE
    except Interrupted as exc:
        _say(args, str(exc))
        return 128 + exc.signum
    except OptionError as exc:  # the caller's options, not the data: a usage error, in flags
        if args.debug:
            traceback.print_exc()
        _say(args, f"error: {exc}", exc.options)
        return EXIT_USAGE
    except ImgconvError as exc:
        if args.debug:
            traceback.print_exc()
        _say(args, f"error: {exc}")
        return EXIT_DATA
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        _print(f"imgconv {args.command}: error: {where}{exc.strerror or exc}", sys.stderr)
        return EXIT_DATA
    except KeyboardInterrupt:
        _print(f"imgconv {args.command}: interrupted", sys.stderr)
        return 130
