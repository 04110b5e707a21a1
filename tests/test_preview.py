"""JPEG previews and the comparison figure."""

from __future__ import annotations

import builtins
import io
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_windowing

import medeq
from medeq.preview import save_preview, window_to_8bit

from .conftest import shared_file


@pytest.mark.parametrize("levels", [256, 4096, 65536])
def test_preview_is_what_a_viewer_shows(levels: int, tmp_path: Path) -> None:
    image = medeq.read(get_testdata_file("CT_small.dcm"))
    derived = medeq.enhance(image, levels=levels)
    [dcm] = medeq.write(derived, tmp_path / "o.dcm", preview=True)
    jpeg = np.asarray(Image.open(dcm.with_suffix(".jpg")), dtype=np.float64)
    ds = pydicom.dcmread(dcm)
    # The viewer: pydicom's own LINEAR window on the written pixels, to 8 bits.
    shown = apply_windowing(ds.pixel_array.astype(np.float64), ds)
    top = 2 ** int(ds.BitsStored) - 1
    expected = shown / top * 255
    assert jpeg.shape == expected.shape
    assert np.abs(jpeg - expected).mean() < 2.5  # JPEG coding error only (quality 95)
    exact = medeq.preview.__globals__["render"](derived)[0]
    assert np.abs(exact - expected).max() <= 1.0


def test_preview_of_a_source_and_sizes(tmp_path: Path) -> None:
    image = medeq.read(shared_file("wg04__RG3_UNC.dcm"))
    path = medeq.preview(image, tmp_path / "p.jpg", size=256)
    with Image.open(path) as img:
        assert img.format == "JPEG"
        assert max(img.size) == 256
        assert img.mode == "L"


def test_multiframe_frame_choice_and_contact_sheet(tmp_path: Path) -> None:
    image = medeq.read(shared_file("pydicomdata__emri_small.dcm"))
    derived = medeq.enhance(image)
    with Image.open(medeq.preview(derived, tmp_path / "a.jpg", frame=3)) as img:
        assert img.size == (64, 64)
    with Image.open(medeq.preview(derived, tmp_path / "s.jpg", frame="sheet")) as img:
        assert img.size == (4 * 64, 3 * 64)  # 10 frames on a 4 x 3 grid
    with pytest.raises(medeq.ParameterError, match="frame 10 is out of range: the image has 10"):
        medeq.preview(derived, tmp_path / "x.jpg", frame=10)
    with pytest.raises(medeq.ParameterError, match="frame must be None, a frame index or 'sheet'"):
        medeq.preview(derived, tmp_path / "x.jpg", frame="all")
    with pytest.raises(medeq.ParameterError, match="quality must be a whole number from 1 to 95"):
        medeq.preview(derived, tmp_path / "x.jpg", quality=100)


def test_comparison_figure(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    image = medeq.read(shared_file("fodicom__CR-MONO1-10-chest.dcm"))
    derived = medeq.enhance(image)
    path = medeq.plot_comparison(image, derived, tmp_path / "fig.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as img:
        assert img.size == (1100, 850)
    assert derived.after.uniformity < derived.before.uniformity
    assert derived.after.rms_contrast > derived.before.rms_contrast


def test_comparison_without_matplotlib_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_import = builtins.__import__

    def no_matplotlib(name: str, *args: object, **kwargs: object) -> object:
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)  # type: ignore[arg-type]

    image = medeq.read(get_testdata_file("CT_small.dcm"))
    derived = medeq.enhance(image)
    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    with pytest.raises(medeq.ParameterError, match=r"pip install 'medeq\[plot\]'"):
        medeq.plot_comparison(image, derived, tmp_path / "fig.png")
    assert not (tmp_path / "fig.png").exists()


def test_quality_figures_of_known_histograms() -> None:
    from medeq.enhance import quality_of

    flat = quality_of(np.full(256, 10))
    assert flat.entropy == pytest.approx(8.0)
    assert flat.uniformity < 1e-9
    spike = quality_of(np.array([100] + [0] * 255))
    assert spike.entropy == 0.0
    assert spike.rms_contrast == 0.0
    assert spike.uniformity > 0.99


@pytest.mark.parametrize(
    ("dtype", "center", "width"),
    [
        (np.uint16, 2048.0, 4096.0),
        (np.uint16, 100.5, 1.0),
        (np.uint8, 127.5, 256.0),
        (np.uint16, 40000.0, 70000.0),
        (np.uint16, 3000.0, 17.0),
    ],
)
def test_window_table_path_matches_the_formula(dtype: type, center: float, width: float) -> None:
    from medeq.preview import window_to_8bit

    rng = np.random.default_rng(3)
    values = rng.integers(0, np.iinfo(dtype).max, (300, 400), endpoint=True).astype(dtype)
    fast = window_to_8bit(values, center, width)  # large unsigned input: the table path
    slow = window_to_8bit(values.astype(np.int64), center, width)  # per-pixel formula
    assert fast.dtype == np.uint8
    np.testing.assert_array_equal(fast, slow)


def test_a_preview_loads_only_the_jpeg_plugin(tmp_path: Path) -> None:
    # Pillow's other common plugins cost a new process some 30 ms to import; the JPEG
    # must be the same as Pillow's format="JPEG" writes.
    out = tmp_path / "p.jpg"
    script = (
        "import sys, pathlib, numpy as np\n"
        "from medeq.preview import save_preview\n"
        "pixels = np.arange(64 * 64, dtype=np.uint16).reshape(1, 64, 64)\n"
        f"save_preview(pixels, (2048.0, 4096.0), pathlib.Path({str(out)!r}))\n"
        "print(sorted(m for m in sys.modules if m.endswith('ImagePlugin')))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "['PIL.JpegImagePlugin']"
    from medeq.preview import window_to_8bit

    table = window_to_8bit(np.arange(64 * 64, dtype=np.uint16).reshape(1, 64, 64), 2048.0, 4096.0)
    expected = io.BytesIO()
    Image.fromarray(table[0]).save(expected, format="JPEG", quality=95)
    assert out.read_bytes() == expected.getvalue()


def test_a_preview_is_encoded_into_its_file_descriptor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Into a real file Pillow encodes with the GIL released (into a Python file-like
    # object it holds it): the in-process conversion relies on that to encode previews
    # on a thread. The bytes are those of an in-memory save.
    from PIL import ImageFile

    real = ImageFile._encode_tile
    descriptors: list[int | None] = []

    def recording(im: Any, fp: Any, tile: Any, bufsize: int, fh: Any, exc: Any = None) -> None:
        descriptors.append(fh)
        real(im, fp, tile, bufsize, fh, exc)

    monkeypatch.setattr(ImageFile, "_encode_tile", recording)
    pixels = np.arange(128 * 128, dtype=np.uint16).reshape(1, 128, 128)
    out = save_preview(pixels, (8192.0, 16384.0), tmp_path / "p.jpg")
    assert len(descriptors) == 1 and isinstance(descriptors[0], int)
    monkeypatch.setattr(ImageFile, "_encode_tile", real)
    expected = io.BytesIO()
    Image.fromarray(window_to_8bit(pixels, 8192.0, 16384.0)[0]).save(
        expected, format="JPEG", quality=95
    )
    assert out.read_bytes() == expected.getvalue()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_FSIZE on Linux")
def test_a_preview_written_only_in_part_is_an_error(tmp_path: Path) -> None:
    # Pillow does not check its last write into a descriptor: at a file size limit (or a
    # full disk) the JPEG would lose its end and still be renamed into place.
    out = tmp_path / "p.jpg"
    script = (
        "import io, resource, sys, numpy as np\n"
        "from PIL import Image\n"
        "from medeq.errors import OutputError\n"
        "from medeq.preview import save_preview, window_to_8bit\n"
        "pixels = np.random.default_rng(0).integers(0, 4096, (1, 600, 600), dtype=np.uint16)\n"
        "whole = io.BytesIO()\n"
        "picture = Image.fromarray(window_to_8bit(pixels, 2048, 4096)[0])\n"
        "picture.save(whole, format='JPEG', quality=95)\n"
        "limit = len(whole.getvalue()) - 50\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))\n"
        "try:\n"
        f"    save_preview(pixels, (2048.0, 4096.0), __import__('pathlib').Path({str(out)!r}))\n"
        "except OutputError as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == f"{out}: cannot write: the JPEG was written only in part"
    assert not out.exists()
    assert not list(tmp_path.glob(".*.part"))


def _dx_missing_its_window() -> medeq.DicomImage:
    """A DX as a real one came: window 2725/5310, data 32744 to 65535 (none inside it)."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.Modality, ds.PixelRepresentation = "DX", 0
    del ds.RescaleSlope, ds.RescaleIntercept
    ramp = np.linspace(32744, 65535, 128 * 128).reshape(128, 128)
    ds.PixelData = ramp.astype(np.uint16).tobytes()
    ds.WindowCenter, ds.WindowWidth = 2725, 5310
    return medeq.read(ds)


def test_preview_of_a_dx_whose_window_misses_its_data_is_not_dark(tmp_path: Path) -> None:
    image = _dx_missing_its_window()
    derived = medeq.enhance(image)
    # Equalized over the data's range: the output spans its levels, the preview its grey.
    assert (int(derived.pixels.min()), int(derived.pixels.max())) == (0, 65535)
    [dcm] = medeq.write(derived, tmp_path / "o.dcm", preview=True)
    jpeg = np.asarray(Image.open(dcm.with_suffix(".jpg")), dtype=np.float64)
    assert 120 < jpeg.mean() < 135
    assert jpeg.min() < 5 and jpeg.max() > 250
    # The source's preview shows the same full range, not a white page.
    source = np.asarray(Image.open(medeq.preview(image, tmp_path / "s.jpg")), np.float64)
    assert source.min() < 5 and source.max() > 250


def test_rendering_a_normalized_image_with_an_empty_range() -> None:
    from medeq import Normalized

    norm = Normalized(
        array=np.array([[[3, 5, 7]]], np.int16),
        value_range=(5.0, 5.0),
        levels=1,
        voi="full range",
        window=None,
        inverted=False,
        units="",
    )
    assert medeq.preview.__globals__["render"](norm).tolist() == [[[0, 0, 255]]]
