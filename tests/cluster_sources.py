"""Sources for the cluster tests, importable by Dask workers (they unpickle them): a real source that
kills its worker once, or reads slowly. Each says the description of the source it wraps, so that
what it converts equals what the wrapped source gives."""
import os
import signal
import time

from imgconv import open_source
from imgconv.sources import Source


class Wrapped(Source):
    """The source at ``path`` (opened with ``options``), read through this class."""

    def __init__(self, path, **options):
        self.inner = open_source(path, **options)

    @property
    def description(self):
        return self.inner.description

    @property
    def length(self):
        return self.inner.length

    @property
    def shape(self):
        return self.inner.shape

    @property
    def label_names(self):
        return self.inner.label_names

    def batches(self, batch_size, start=0, stop=None):
        return self.inner.batches(batch_size, start, stop)

    def take(self, indices):
        return self.inner.take(indices)


class KillsItsWorkerOnce(Wrapped):
    """Kills the process reading image ``at`` the first time (``marker`` records it), as a worker dying mid-task."""

    def __init__(self, path, at, marker, **options):
        super().__init__(path, **options)
        self.at = at
        self.marker = marker

    def batches(self, batch_size, start=0, stop=None):
        for images, labels in self.inner.batches(batch_size, start, stop):
            if start <= self.at < start + len(labels):
                try:
                    os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                except FileExistsError:
                    pass  # killed once already: this is the retry
                else:
                    os.kill(os.getpid(), signal.SIGKILL)
            start += len(labels)
            yield images, labels


class Slow(Wrapped):
    """Sleeps ``delay`` seconds before each batch: a conversion long enough to kill its driver midway."""

    def __init__(self, path, delay, **options):
        super().__init__(path, **options)
        self.delay = delay

    def batches(self, batch_size, start=0, stop=None):
        for batch in self.inner.batches(batch_size, start, stop):
            time.sleep(self.delay)
            yield batch
