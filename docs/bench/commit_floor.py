"""The floor of imgconv's atomic commit on a filesystem: bare system calls, no imgconv, no format.

Times, round after round in alternating order, the classic way of creating a store of one small file
(or a directory holding one) against the system calls imgconv's writer makes around the same file:
the locked partial directory beside DST, the file made in it, the rename into place, the removal of
the partial directory, with and without the sync of DST's directory (``durable``). Each variant's
output is removed, untimed, before its next run. Prints min / median / max in microseconds, and the
per-round ratio classic / variant (above 1: the variant is faster), as BENCHMARKS.md ("Fixed costs")
quotes them.

    python docs/bench/commit_floor.py [DIRECTORY] [ROUNDS]

DIRECTORY (default: the system temp dir) decides the filesystem measured.
"""
import fcntl
import os
import statistics
import sys
import tempfile
import threading
import time
from collections import deque

DATA = os.urandom(4096)
CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC


class Closer:
    """Closes descriptors in a thread, as imgconv's writer closes the removed partial directory."""

    def __init__(self):
        self.fds, self.wake = deque(), threading.Lock()
        self.wake.acquire()
        threading.Thread(target=self.run, daemon=True).start()

    def close(self, fd):
        self.fds.append(fd)
        try:
            self.wake.release()
        except RuntimeError:
            pass

    def run(self):
        while True:
            self.wake.acquire()
            while self.fds:
                os.close(self.fds[0])
                self.fds.popleft()

    def drain(self):
        while self.fds:
            time.sleep(0.0005)


def write_file(path):
    fd = os.open(path, CREATE, 0o666)
    os.write(fd, DATA)
    os.close(fd)


def sync_dir(path):
    fd = os.open(path, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)


class Variants:
    def __init__(self, root):
        self.root = root
        self.dst = os.path.join(root, "store")
        self.partial = os.path.join(root, ".store.imgconv-partial")
        self.inner = os.path.join(self.partial, "store")
        self.closer = Closer()

    # A store of one file (HDF5) -------------------------------------------------------------
    def classic_file(self):
        write_file(self.dst)

    def _atomic(self, make, close_dir, durable):
        os.mkdir(self.partial)
        fd = os.open(self.partial, os.O_RDONLY | os.O_DIRECTORY)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        make(self.inner)
        os.rename(self.inner, self.dst)  # imgconv: renameat2(RENAME_NOREPLACE), the same work
        if durable:
            sync_dir(self.root)
        os.rmdir(self.partial)
        close_dir(fd)

    def atomic_file_close_waited(self):
        self._atomic(write_file, os.close, False)

    def atomic_file(self):
        self._atomic(write_file, self.closer.close, False)

    def atomic_file_durable(self):
        self._atomic(write_file, self.closer.close, True)

    # A store of a directory (LMDB, PNG folder) -------------------------------------------------
    @staticmethod
    def _directory(path):
        os.mkdir(path)
        write_file(os.path.join(path, "data"))

    def classic_dir(self):
        self._directory(self.dst)

    def atomic_dir(self):
        self._atomic(self._directory, self.closer.close, False)

    def atomic_dir_durable(self):
        self._atomic(self._directory, self.closer.close, True)

    # What one step costs ----------------------------------------------------------------------
    def create_empty_file(self):
        os.close(os.open(self.dst, CREATE, 0o666))

    def mkdir(self):
        os.mkdir(self.dst)

    def remove_empty_dir(self):  # the partial directory's end: rmdir, then the last close
        os.mkdir(self.partial)
        fd = os.open(self.partial, os.O_RDONLY | os.O_DIRECTORY)
        start = time.perf_counter()
        os.rmdir(self.partial)
        os.close(fd)
        return time.perf_counter() - start

    def sync_parent(self):
        write_file(self.dst)
        start = time.perf_counter()
        sync_dir(self.root)
        return time.perf_counter() - start

    def clean(self):
        self.closer.drain()
        for path in (os.path.join(self.dst, "data"), os.path.join(self.inner, "data"), self.inner):
            if os.path.isfile(path):
                os.unlink(path)
            elif os.path.isdir(path):
                os.rmdir(path)
        for path in (self.partial, self.dst):
            if os.path.isdir(path):
                os.rmdir(path)
            elif os.path.lexists(path):
                os.unlink(path)


NAMES = ["classic_file", "atomic_file_close_waited", "atomic_file", "atomic_file_durable",
         "classic_dir", "atomic_dir", "atomic_dir_durable",
         "create_empty_file", "mkdir", "remove_empty_dir", "sync_parent"]
PAIRS = [("classic_file", "atomic_file_close_waited"), ("classic_file", "atomic_file"),
         ("classic_file", "atomic_file_durable"), ("classic_dir", "atomic_dir"), ("classic_dir", "atomic_dir_durable")]


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else tempfile.gettempdir()
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 200
    with tempfile.TemporaryDirectory(prefix="commit-floor-", dir=root) as here:
        v = Variants(here)
        times = {name: [] for name in NAMES}
        for r in range(rounds):
            for name in NAMES if r % 2 == 0 else NAMES[::-1]:
                v.clean()
                start = time.perf_counter()
                inner = getattr(v, name)()
                times[name].append(inner if inner is not None else time.perf_counter() - start)
        v.clean()
    print(f"{root}: {rounds} rounds, microseconds (min / median / max)")
    for name in NAMES:
        t = sorted(times[name])
        print(f"  {name:26s} {t[0] * 1e6:8.0f} {statistics.median(t) * 1e6:8.0f} {t[-1] * 1e6:9.0f}")
    print("per-round ratio classic / imgconv's protocol (min / median / max)")
    for classic, atomic in PAIRS:
        ratio = sorted(c / a for c, a in zip(times[classic], times[atomic]))
        print(f"  {classic} / {atomic:26s} {ratio[0]:5.2f} {statistics.median(ratio):5.2f} {ratio[-1]:6.2f}")


if __name__ == "__main__":
    main()
