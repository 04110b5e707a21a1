"""Series: grouping, ordering, problems, volumes, DICOMDIR."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

import medeq

from .conftest import shared_file

ABD = [f"fodicom__abd1_adb1_{i}.dcm" for i in range(1, 12)]


def test_shuffled_mr_series_is_ordered() -> None:
    paths = [shared_file(n) for n in ABD]
    shuffled = paths[:]
    random.Random(7).shuffle(shuffled)
    [series] = medeq.read_series(shuffled)
    assert len(series) == 11
    assert [im.info.instance_number for im in series] == list(range(1, 12))
    # A tri-plane localizer (coronal, axial, sagittal stacks): reported, and the order
    # falls back to the instance number.
    assert series.ordered_by == "instance number"
    assert any("mixed orientations" in p for p in series.problems)


def test_ordering_by_position_along_the_normal(tmp_path: Path) -> None:
    paths = [shared_file(n) for n in ABD[:5]]  # the coronal stack of the localizer
    [series] = medeq.read_series(list(reversed(paths)))
    assert series.ordered_by == "position"
    iop = np.array(series.images[0].info.image_orientation)
    normal = np.cross(iop[:3], iop[3:])
    distance = [float(np.dot(normal, im.info.image_position)) for im in series]
    assert distance == sorted(distance)
    assert series.problems == []


def test_gap_and_duplicate_are_reported(tmp_path: Path) -> None:
    for n in ABD[:2] + ABD[3:5]:  # coronal stack with its middle slice missing
        shutil.copy(shared_file(n), tmp_path / n)
    shutil.copy(shared_file(ABD[0]), tmp_path / "copy_of_first.dcm")
    [series] = medeq.read_series(tmp_path)
    assert len(series) == 4
    text = "\n".join(series.problems)
    assert "duplicate instance" in text
    assert "about 1 slice(s) missing" in text


def test_folder_is_searched_recursively_and_grouped(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    shutil.copy(shared_file("dcmqi__ct-3slice_02.dcm"), tmp_path / "a" / "b" / "x")
    shutil.copy(shared_file("dcmqi__ct-3slice_01.dcm"), tmp_path / "a" / "y")
    shutil.copy(shared_file("dcmqi__ct-3slice_03.dcm"), tmp_path / "z.dcm")
    shutil.copy(shared_file(ABD[0]), tmp_path / "mr.dcm")
    (tmp_path / "notes.txt").write_text("not dicom")
    errors: list = []
    series = medeq.read_series(tmp_path, errors=errors)
    assert sorted(len(s) for s in series) == [1, 3]
    ct = next(s for s in series if len(s) == 3)
    assert [Path(im.name).name for im in ct] in (["y", "x", "z.dcm"], ["z.dcm", "x", "y"])
    assert ct.volume().shape == (3, 512, 512)
    assert ct.volume().dtype == np.int16
    assert len(errors) == 1 and isinstance(errors[0][1], medeq.NotDicomError)


def test_mixed_sizes_refuse_to_stack(tmp_path: Path) -> None:
    a = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    b = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    b.SOPInstanceUID = pydicom.uid.generate_uid()
    b.Rows, b.Columns = 64, 256  # same bytes, other shape
    a.save_as(tmp_path / "a.dcm")
    b.save_as(tmp_path / "b.dcm")
    [series] = medeq.read_series(tmp_path)
    assert "mixed image sizes: 128x128, 64x256" in series.problems
    with pytest.raises(medeq.SeriesError, match="cannot stack images of different sizes"):
        series.volume()


def test_dicomdir_lists_its_files() -> None:
    dicomdir = get_testdata_file("DICOMDIR")
    if dicomdir is None:
        pytest.skip("pydicom's bundled DICOMDIR is not installed")
    errors: list = []
    series = medeq.read_series(dicomdir, errors=errors)
    total = sum(len(s) for s in series) + len(errors)
    assert total > 1
    assert all(Path(im.name).exists() for s in series for im in s)


QATS = [f"dcmqats__In_{i}.dcm" for i in (1, 2, 3, 4, 5, 7, 9)]


def test_images_at_one_position_are_not_a_volume() -> None:
    # The same MR slice in seven transfer syntaxes: seven images, one position.
    [series] = medeq.read_series([shared_file(n) for n in QATS])
    assert any("same position" in p for p in series.problems)
    with pytest.raises(medeq.SeriesError, match=r"7 images at the same position") as caught:
        series.volume()
    assert series.uid in str(caught.value)
    assert "force=True" in str(caught.value)
    assert series.volume(force=True).shape == (7, 384, 384)


def test_mixed_orientations_are_not_a_volume() -> None:
    [series] = medeq.read_series([shared_file(n) for n in ABD])
    with pytest.raises(medeq.SeriesError, match="mixed orientations") as caught:
        series.volume()
    assert series.uid in str(caught.value)
    stacked = series.volume(force=True)
    assert stacked.shape == (11, 256, 256)
    # force keeps the order of Series.images (instance number here).
    np.testing.assert_array_equal(stacked[3], medeq.modality_values(series.images[3])[0])


def test_gap_is_stacked_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    for n in ABD[:2] + ABD[3:5]:  # coronal stack with its middle slice missing
        shutil.copy(shared_file(n), tmp_path / n)
    [series] = medeq.read_series(tmp_path)
    with caplog.at_level("WARNING", logger="medeq.series"):
        assert series.volume().shape == (4, 256, 256)
    assert "slice(s) missing" in caplog.text


def test_two_images_at_one_position_are_reported(tmp_path: Path) -> None:
    # Only two images: no spacing to compare with, but the coincidence is still found.
    for name in ("a", "b"):
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        ds.save_as(tmp_path / f"{name}.dcm")
    [series] = medeq.read_series(tmp_path)
    assert len(series) == 2
    assert any("two images at the same position" in p for p in series.problems)
    with pytest.raises(medeq.SeriesError, match="2 images at the same position"):
        series.volume()
    assert series.volume(force=True).shape == (2, 128, 128)


def test_force_does_not_stack_mixed_sizes(tmp_path: Path) -> None:
    a = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    b = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    b.SOPInstanceUID = pydicom.uid.generate_uid()
    b.Rows, b.Columns = 64, 256
    a.save_as(tmp_path / "a.dcm")
    b.save_as(tmp_path / "b.dcm")
    [series] = medeq.read_series(tmp_path)
    with pytest.raises(medeq.SeriesError, match="cannot stack images of different sizes"):
        series.volume(force=True)
