"""The command line, run as users run it: in a subprocess, end to end."""
import os
import signal
import subprocess
import sys
import sysconfig
import time

import numpy as np
import pytest
from PIL import Image

import imgconv
import imgconv.stores
from imgconv.sample import generate_sample, write_sample


def run(*args, timeout=300, **kwargs):
    return subprocess.run([sys.executable, "-m", "imgconv", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, **kwargs)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Every kind of source, holding the same 120 sample images (train part: 100)."""
    root = tmp_path_factory.mktemp("inputs")
    files = write_sample(root / "cifar", count=120, seed=5)
    images, labels = generate_sample(120, seed=5)
    train, train_labels = images[: files.train], labels[: files.train]
    np.save(root / "images.npy", train)
    np.savez(root / "arrays.npz", images=train, labels=train_labels)
    folder = root / "folder"
    for i, (image, label) in enumerate(zip(train, train_labels)):
        (folder / f"c{label}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"c{label}" / f"{i:04d}.png")
    return {
        "python_dir": files.python_dir,
        "python_archive": files.python_archive,
        "binary_dir": files.binary_dir,
        "binary_archive": files.binary_archive,
        "npy": root / "images.npy",
        "npz": root / "arrays.npz",
        "folder": folder,
        "_train": (train, train_labels),
    }


@pytest.mark.parametrize("suffix", [".lmdb", ".h5", "_png"])
@pytest.mark.parametrize("kind", ["python_dir", "python_archive", "binary_dir", "binary_archive", "npy", "npz",
                                  "folder"])
def test_convert_every_source_kind_into_every_format(tmp_path, inputs, kind, suffix):
    dest = tmp_path / f"out{suffix}"
    done = run("convert", inputs[kind], dest, "--workers", "2", "--batch-size", "32")
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # no bar: stderr is not a terminal
    assert "100 images in" in done.stdout and str(dest) in done.stdout
    images, labels = imgconv.stores.open(dest).read_all()
    train, train_labels = inputs["_train"]
    if kind == "folder":  # files in class folders, sorted: compare as sets of (label, pixels)
        assert sorted(labels.tolist()) == sorted(train_labels.tolist())
        assert sorted(i.tobytes() for i in images) == sorted(i.tobytes() for i in train)
    else:
        np.testing.assert_array_equal(images, train)
        if kind != "npy":  # a bare .npy has no labels
            np.testing.assert_array_equal(labels, train_labels)


@pytest.mark.parametrize("suffix", [".lmdb", ".h5", "_png"])
def test_same_bytes_for_0_1_and_2_workers(tmp_path, inputs, suffix):
    outputs = []
    for workers in (0, 1, 2):
        dest = tmp_path / f"w{workers}{suffix}"
        done = run("convert", inputs["python_archive"], dest, "--workers", workers, "--batch-size", "24", "--quiet")
        assert done.returncode == 0, done.stderr
        files = sorted(p for p in dest.rglob("*") if p.is_file() and p.name != "lock.mdb") if dest.is_dir() else [dest]
        outputs.append([(str(p.relative_to(dest)) if dest.is_dir() else "", p.read_bytes()) for p in files])
    assert outputs[0] == outputs[1] == outputs[2]


@pytest.mark.parametrize("command", ["convert", "info", "verify", "sample"])
def test_every_command_has_help_with_an_example(command):
    done = run(command, "--help")
    assert done.returncode == 0 and "example" in done.stdout


def _stderr_on_a_terminal(*args):
    """Run the command line with stderr on a pseudo-terminal (so it draws its bar); returns (status, stderr)."""
    import fcntl
    import pty
    import struct
    import termios

    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # rows, columns
    process = subprocess.Popen([sys.executable, "-m", "imgconv", *map(str, args)], stdout=subprocess.DEVNULL,
                               stderr=follower)
    os.close(follower)
    output = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the process closed the terminal
            break
        if not chunk:
            break
        output += chunk
    os.close(leader)
    return process.wait(timeout=300), output.decode(errors="replace")


@pytest.mark.parametrize("kind", ["python_archive", "binary_archive", "python_dir"])
def test_the_progress_bar_shows_a_total_and_time_left_for_an_archive_too(tmp_path, inputs, kind):
    status, bar = _stderr_on_a_terminal("convert", inputs[kind], tmp_path / "out.lmdb", "--batch-size", "16",
                                        "--workers", "0")
    assert status == 0, bar
    assert "100/100" in bar and "100%" in bar and "<00:00" in bar  # done/total, percent, time left


def test_quiet_prints_nothing(tmp_path, inputs):
    done = run("convert", inputs["binary_dir"], tmp_path / "q.lmdb", "--quiet")
    assert done.returncode == 0 and done.stdout == "" and done.stderr == ""


def test_bad_input_is_one_line_and_status_1(tmp_path):
    done = run("convert", tmp_path / "missing", tmp_path / "out.lmdb")
    assert done.returncode == 1
    assert done.stderr.strip().count("\n") == 0 and "missing: no such file or directory" in done.stderr
    assert "Traceback" not in done.stderr
    debug = run("convert", tmp_path / "missing", tmp_path / "out.lmdb", "--debug")
    assert debug.returncode == 1 and "Traceback" in debug.stderr


def test_existing_destination_says_how_to_replace_it(tmp_path, inputs):
    dest = tmp_path / "x.lmdb"
    assert run("convert", inputs["binary_dir"], dest, "--limit", "5").returncode == 0
    again = run("convert", inputs["binary_dir"], dest, "--limit", "5")
    assert again.returncode == 1 and "to replace it, pass --overwrite" in again.stderr
    assert "overwrite=True" not in again.stderr
    assert run("convert", inputs["binary_dir"], dest, "--limit", "7", "--overwrite").returncode == 0


@pytest.mark.parametrize("args", [["convert"], ["convert", "a", "b", "--workers", "-1"],
                                  ["convert", "a", "b", "--resize", "12"], ["frobnicate"]])
def test_usage_errors_exit_2(args):
    done = run(*args)
    assert done.returncode == 2 and "usage:" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("dest, flags, message", [
    ("out.lmdb", ["--png-level", "1"], "--png-level applies to png stores"),
    ("out", ["--hdf5-chunk", "8"], "--hdf5-chunk applies to hdf5 stores"),
    ("out.h5", ["--format", "lmdb", "--hdf5-compression", "lzf"], "written as lmdb"),
])
def test_a_store_option_of_another_format_is_a_usage_error(tmp_path, inputs, dest, flags, message):
    done = run("convert", inputs["binary_dir"], tmp_path / dest, "--limit", "5", *flags)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr
    assert not os.path.exists(tmp_path / dest)


@pytest.mark.parametrize("dest, suffix", [("x.lmbd", ".lmbd"), ("z.txt", ".txt")])
def test_an_unknown_dest_suffix_is_a_usage_error_unless_format_says(tmp_path, inputs, dest, suffix):
    done = run("convert", inputs["npy"], tmp_path / dest, "--limit", "5")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"unknown store suffix {suffix!r}" in done.stderr and ".lmdb" in done.stderr and ".h5" in done.stderr
    assert "--format NAME" in done.stderr and "format=" not in done.stderr
    assert not os.path.exists(tmp_path / dest)
    done = run("convert", inputs["npy"], tmp_path / dest, "--limit", "5", "--format", "png", "--quiet")
    assert done.returncode == 0 and len(imgconv.stores.open(tmp_path / dest)) == 5


def test_a_bare_name_or_a_trailing_slash_is_a_png_folder(tmp_path, inputs):
    for dest in ("plain", "with.dot/"):
        done = run("convert", inputs["npy"], f"{tmp_path}/{dest}", "--limit", "3")
        assert done.returncode == 0 and "(png)" in done.stdout, done.stderr
        assert len(imgconv.stores.open(tmp_path / dest)) == 3


@pytest.mark.parametrize("kind, flags, message", [
    ("binary_dir", ["--label-kind", "coarse"], "--label-kind coarse applies to CIFAR-100;"),
    ("npy", ["--mode", "L"], "is read as NumPy, which takes no --mode L (--mode applies to image folders)"),
    ("npy", ["--split", "test"], "a .npy array has no test part; use --split train (or"),
    ("npy", ["--hdf5-level", "5"], "out.h5: --hdf5-level applies to --hdf5-compression gzip only"),
])
def test_options_that_do_not_fit_are_usage_errors_in_flags(tmp_path, inputs, kind, flags, message):
    done = run("convert", inputs[kind], tmp_path / "out.h5", "--limit", "5", *flags)
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert "_" not in done.stderr.replace(str(tmp_path), "").replace(str(inputs[kind]), "")  # no keyword names
    assert "Traceback" not in done.stderr and not os.path.exists(tmp_path / "out.h5")


@pytest.mark.parametrize("workers", ["0", "2"])
@pytest.mark.parametrize("resize", [[], ["--resize", "16x16"]])
def test_on_error_skip_reports_each_skipped_file_once_cleanly(tmp_path, inputs, workers, resize):
    folder = tmp_path / "in" / "c"
    folder.mkdir(parents=True)
    for i, image in enumerate(inputs["_train"][0][:5]):
        Image.fromarray(image).save(folder / f"{i}.png")
    (folder / "bad.png").write_bytes(b"not a PNG at all")
    done = run("convert", tmp_path / "in", tmp_path / "out.lmdb", "--on-error", "skip", "--workers", workers,
               "--batch-size", "2", "--quiet", *resize)
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("bad.png") == 1 and "skipped 1 unreadable file(s):" in done.stderr
    assert "Warning" not in done.stderr and ".py:" not in done.stderr and "BufferedReader" not in done.stderr
    assert len(imgconv.stores.open(tmp_path / "out.lmdb")) == 5


@pytest.mark.parametrize("args, hint", [
    (["--workrs", "2"], "unrecognized arguments: --workrs 2 (did you mean --workers?)"),
    (["--limt=3", "--shufle"], "(did you mean --limit for --limt=3, --shuffle for --shufle?)"),
    (["-x"], "unrecognized arguments: -x\n"),  # an extra positional is one more SOURCE (several are read in turn)
])
def test_a_mistyped_option_shows_the_subcommands_usage_and_the_nearest_option(args, hint):
    done = run("convert", "in", "out.lmdb", *args)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.startswith("usage: imgconv convert ") and "imgconv convert: error: " in done.stderr
    assert hint in done.stderr


def test_help_and_version():
    top = run("--help")
    assert top.returncode == 0 and "convert" in top.stdout and "sample" in top.stdout and "examples:" in top.stdout
    sub = run("convert", "--help")
    assert sub.returncode == 0 and "--workers" in sub.stdout and "examples:" in sub.stdout
    version = run("--version")
    assert version.returncode == 0 and version.stdout.strip() == f"imgconv {imgconv.__version__}"


def test_console_script_is_installed():
    script = os.path.join(sysconfig.get_path("scripts"), "imgconv")
    assert os.path.exists(script), "pip install did not create the imgconv console script"
    done = subprocess.run([script, "--version"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and imgconv.__version__ in done.stdout


def _processes_in_group(pgid):
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                found.append(int(entry))
    return found


@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_stops_cleanly_with_no_process_and_no_output_left(tmp_path, signum, status):
    # Enough slow work (PNG level 9, small batches) to be interrupted midway.
    np.save(tmp_path / "many.npy", generate_sample(6000, seed=1)[0])
    dest = tmp_path / "out"
    process = subprocess.Popen(
        [sys.executable, "-m", "imgconv", "convert", tmp_path / "many.npy", dest, "--workers", "2",
         "--batch-size", "50", "--png-level", "9"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(_processes_in_group(process.pid)) < 3:
        time.sleep(0.05)  # wait for the parent and both workers
    assert len(_processes_in_group(process.pid)) >= 3, "the pool did not start"
    time.sleep(0.5)
    os.killpg(process.pid, signum)  # what a terminal's Ctrl-C does: the whole group
    out, err = process.communicate(timeout=60)
    assert process.returncode == status, err
    assert "interrupted" in err and "Traceback" not in err
    deadline = time.monotonic() + 10
    while _processes_in_group(process.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _processes_in_group(process.pid) == []
    assert not dest.exists()
    # Only the batches written so far, kept beside dest for --resume.
    assert sorted(os.listdir(tmp_path)) in (["many.npy"], [".out.imgconv-partial", "many.npy"])
