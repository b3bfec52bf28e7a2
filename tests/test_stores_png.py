"""PNG folders: channels, damaged files and CSVs, the classic layout, hostile manifests."""
import json
import os

import numpy as np
import pytest
from factories import change_label, leftovers, make_images, target, tree_digest, write

from imgconv import stores
from imgconv.errors import StoreError
from imgconv.stores import metadata, png_folder


def test_png_refuses_more_than_four_channels(tmp_path):
    with pytest.raises(StoreError, match="1 to 4 channels"):
        with stores.create(target(tmp_path, "png")) as writer:
            writer.append(make_images(1, (2, 2, 5)), [0])
    assert not leftovers(tmp_path)


def test_corrupt_png(tmp_path):
    path = write(target(tmp_path, "png"), make_images(3), [0, 1, 2])
    victim = os.path.join(path, png_folder.image_path(1))
    with open(victim, "r+b") as f:
        f.truncate(30)
    with stores.open(path) as store:
        assert store[0][1] == 0
        with pytest.raises(StoreError, match=r"000001\.png.*image 1"):
            store[1]


def test_png_manifest_and_labels_checked(tmp_path):
    path = write(target(tmp_path, "png"), make_images(3), [0, 1, 2])
    with open(os.path.join(path, "labels.csv"), "a") as f:
        f.write("3,images/000/000003.png,7,00000000\n")
    with pytest.raises(StoreError, match="lists 4 images, the manifest says 3"):
        stores.open(path)
    with open(os.path.join(path, "manifest.json"), "w") as f:
        f.write("{not json")
    with pytest.raises(StoreError, match="not valid JSON"):
        stores.open(path)


def _classic_folder(directory, images, labels):
    """What the classic recipe writes: 0.png .. N-1.png and a space-separated CSV of labels named N.csv."""
    from PIL import Image

    for i, image in enumerate(images):
        Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image).save(os.path.join(directory, f"{i}.png"))
    with open(os.path.join(directory, f"{len(images)}.csv"), "w") as f:
        f.write("".join(f"{int(label)}\n" for label in labels))


def test_reads_the_classic_png_layout(tmp_path):
    images = make_images(12, (6, 5, 3))
    labels = np.arange(12) % 4
    folder = tmp_path / "classic"
    folder.mkdir()
    _classic_folder(str(folder), images, labels)
    assert stores.detect_format(folder) == "png"
    with stores.open(folder) as store:
        assert len(store) == 12 and store.shape == (6, 5, 3)
        got, got_labels = store.read_batch([11, 0, 0])
        assert np.array_equal(got, images[[11, 0, 0]]) and got_labels.tolist() == labels[[11, 0, 0]].tolist()


@pytest.mark.parametrize("csv_text", ["label\n3\n4\n", "3\n4\n", "index,path,label\n0,0.png,3\n1,1.png,4\n"])
def test_classic_labels_csv_forms(tmp_path, csv_text):
    from PIL import Image

    images = make_images(2, (3, 3, 1))
    for i, image in enumerate(images):
        Image.fromarray(image[:, :, 0]).save(tmp_path / f"{i}.png")
    (tmp_path / "labels.csv").write_text(csv_text)
    with stores.open(tmp_path) as store:
        assert store.read_all()[1].tolist() == [3, 4]
        assert np.array_equal(store.read_all()[0], images)


def test_classic_folder_with_missing_images(tmp_path):
    from PIL import Image

    Image.fromarray(make_images(1, (2, 2, 3))[0]).save(tmp_path / "0.png")
    (tmp_path / "labels.csv").write_text("1\n2\n3\n")
    with pytest.raises(StoreError, match="lists 3 labels but .*2.png is missing"):
        stores.open(tmp_path)


def test_png_labels_file_outside_the_folder_is_refused(tmp_path):
    path = write(target(tmp_path, "png"), make_images(2), [0, 1])
    (tmp_path / "elsewhere.csv").write_text(open(os.path.join(path, "labels.csv")).read())
    name = os.path.join(path, "manifest.json")
    for outside in ("../elsewhere.csv", str(tmp_path / "elsewhere.csv")):
        meta = json.load(open(name))
        meta["labels_file"] = outside
        meta["metadata_crc32c"] = metadata.metadata_checksum(meta)  # crafted, so with a matching checksum
        json.dump(meta, open(name, "w"))
        with pytest.raises(StoreError, match="outside the folder"):
            stores.open(path)


def test_png_checksum_above_32_bits_is_a_store_error(tmp_path):
    path = write(target(tmp_path, "png"), make_images(2), [0, 1])
    name = os.path.join(path, "labels.csv")
    rows = open(name).read().splitlines()
    rows[2] = ",".join(rows[2].split(",")[:3] + ["1" + rows[2].split(",")[3]])
    open(name, "w").write("\n".join(rows) + "\n")
    with pytest.raises(StoreError, match="row 3"):
        stores.open(path)


def test_png_decompression_bomb_is_a_store_error(tmp_path, monkeypatch):
    from PIL import Image

    path = write(target(tmp_path, "png"), make_images(2, (16, 16, 3)), [0, 1])
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50)  # 256 pixels is then over twice the limit
    with stores.open(path) as store:
        with pytest.raises(StoreError, match="decompression bomb"):
            store[1]


def test_png_label_beyond_int64_is_a_store_error(tmp_path):
    path = write(target(tmp_path, "png"), make_images(2), [0, 1])
    change_label(path, "png", 1, 2**64)
    with pytest.raises(StoreError, match="row 3"):
        stores.open(path)


@pytest.mark.filterwarnings("ignore::imgconv.sources.base.SkippedImageWarning")  # skipping is the point here
@pytest.mark.parametrize("workers", [0, 2])
def test_png_conversion_with_skipped_images_matches_any_pool(tmp_path, workers):
    from PIL import Image

    import imgconv

    root = tmp_path / "folder"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(11):
        Image.fromarray(rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)).save(root / f"{i:03d}.png")
    (root / "004.png").write_bytes(b"not a PNG")
    (root / "008.png").write_bytes(b"not a PNG either")
    one = imgconv.convert(root, tmp_path / "one", workers=1, batch_size=11, on_error="skip")
    many = imgconv.convert(root, tmp_path / "many", workers=workers, batch_size=3, on_error="skip")
    assert one.count == many.count == 9
    assert tree_digest(one.path) == tree_digest(many.path)
    with stores.open(many.path) as store:
        assert store.check_layout() == [] and len(store.read_all()[0]) == 9
