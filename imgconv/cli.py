"""The ``imgconv`` command line: one ``cmd_*`` function per subcommand.

``main(argv=None)`` parses the arguments, runs the command and returns the
exit status: 0 on success, 1 when the data or the files are at fault (one
line on stderr, no traceback), 2 for a usage error. Subcommands are
registered in ``COMMANDS``; each entry adds its arguments to a parser and
names the function that runs it.
"""
import argparse
import sys
import time
from collections import namedtuple

from . import __version__
from .errors import ImgconvError
from .sample import MIN_COUNT, write_sample

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


def _add_sample_arguments(parser):
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


COMMANDS = [
    Command(
        "sample", "write a synthetic dataset in the genuine CIFAR-10 file formats", _add_sample_arguments, cmd_sample
    ),
]


def build_parser():
    """The argument parser with every registered subcommand."""
    parser = argparse.ArgumentParser(prog="imgconv", description="Store image datasets once, read them fast.")
    parser.add_argument("--version", action="version", version=f"imgconv {__version__}")
    subcommands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        sub = subcommands.add_parser(command.name, help=command.help, description=command.help)
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
    except ImgconvError as exc:
        print(f"imgconv {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_DATA
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"imgconv {args.command}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return EXIT_DATA
    except KeyboardInterrupt:
        print(f"imgconv {args.command}: interrupted", file=sys.stderr)
        return 130
