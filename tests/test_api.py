"""The public API: a small top level, documented sub-modules, and old names that still work (with a warning)."""
import importlib
import warnings

import numpy as np
import pytest

import imgconv

TOP_LEVEL = {"convert", "load", "open", "create", "open_source", "verify", "info", "ConvertResult", "VerifyReport",
             "__version__"}


def test_the_top_level_is_the_workflow_and_the_errors():
    errors = {name for name in imgconv.__all__ if name.endswith(("Error", "Warning")) or name in
              ("Interrupted", "WorkerDied")}
    assert set(imgconv.__all__) == TOP_LEVEL | errors
    assert all(getattr(imgconv.errors, name) is getattr(imgconv, name) for name in errors)
    for name in imgconv.__all__:
        assert getattr(imgconv, name).__doc__ or name == "__version__", name


@pytest.mark.parametrize("name, home", [
    ("BACKEND", "imgconv.kernels"), ("chw_to_hwc", "imgconv.kernels"), ("crc32c", "imgconv.kernels"),
    ("pack_records", "imgconv.record"), ("unpack_records", "imgconv.record"), ("PackedRecords", "imgconv.record"),
    ("generate_sample", "imgconv.sample"), ("write_sample", "imgconv.sample"), ("Source", "imgconv.sources"),
])
def test_names_that_left_the_top_level_still_work_and_say_where_they_went(name, home):
    with pytest.warns(DeprecationWarning, match=rf"imgconv\.{name} has moved: use {home}\.{name}"):
        value = getattr(imgconv, name)
    assert value is getattr(importlib.import_module(home), name)
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        _ = imgconv.no_such_name


def test_from_import_of_an_old_name_warns_too():
    with pytest.warns(DeprecationWarning, match="imgconv.kernels.chw_to_hwc"):
        from imgconv import chw_to_hwc  # noqa: F401


@pytest.mark.parametrize("module, name, home", [
    ("imgconv.stores.base", "check_batch", "imgconv.stores.batch"),
    ("imgconv.stores.base", "remove_path", "imgconv._platform"),
    ("imgconv.stores.base", "Writer", "imgconv.stores.writer"),
    ("imgconv.stores.lmdb_store", "LmdbReader", "imgconv.stores.lmdb.reader"),
    ("imgconv.stores.hdf5_store", "Hdf5Writer", "imgconv.stores.hdf5.writer"),
    ("imgconv.stores.lmdb_check", "check_lmdb_file", "imgconv.stores.lmdb.pagecheck"),
])
def test_modules_that_were_split_forward_their_old_names(module, name, home):
    with pytest.warns(DeprecationWarning, match=rf"{module}\.{name} has moved: use {home}\.{name}"):
        value = getattr(importlib.import_module(module), name)
    assert value is getattr(importlib.import_module(home), name)


def test_verify_and_info_are_the_functions_the_command_line_prints(tmp_path):
    with imgconv.create(tmp_path / "x.h5") as writer:
        writer.append(np.zeros((4, 3, 3, 3), np.uint8), [0, 1, 1, 2])
    report = imgconv.verify(tmp_path / "x.h5")
    assert isinstance(report, imgconv.VerifyReport) and report.bad == [] and report.count == 4
    assert imgconv.info(tmp_path / "x.h5")["label_counts"] == {"0": 1, "1": 2, "2": 1}
    from imgconv.verify import store_info, verify_store  # the old names, where they were

    assert verify_store is imgconv.verify and store_info is imgconv.info


def test_kernels_and_record_are_documented_sub_modules():
    assert imgconv.kernels.chw_to_hwc.__doc__ and imgconv.record.pack_records.__doc__
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert imgconv.sample.generate_sample(2, seed=0)[0].shape == (2, 32, 32, 3)


def test_the_source_registry_entry_is_a_source_kind():
    from imgconv import sources

    assert all(isinstance(kind, sources.SourceKind) for kind in sources.READERS)
    with pytest.warns(DeprecationWarning, match="use imgconv.sources.SourceKind"):
        assert sources.Reader is sources.SourceKind
