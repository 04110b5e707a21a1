"""The automatic foreground mask."""

from __future__ import annotations

import numpy as np
import pytest

import medeq

from .conftest import shared_file


def test_disk_on_noise(rng: np.random.Generator) -> None:
    yy, xx = np.mgrid[:200, :200]
    disk = (yy - 100) ** 2 + (xx - 90) ** 2 < 60**2
    img = rng.normal(10, 3, (200, 200))
    img[disk] += rng.normal(300, 40, int(disk.sum()))
    img[95:105, 85:95] = 10  # a dark hole inside: filled
    mask = medeq.foreground_mask(img)
    iou = (mask & disk).sum() / (mask | disk).sum()
    assert iou > 0.95
    assert mask[100, 90]


def test_collimator_bands_are_excluded(rng: np.random.Generator) -> None:
    img = rng.normal(100, 5, (300, 300))
    img[80:220, 80:220] += rng.normal(400, 60, (140, 140))
    img[:, :30] = 1000 + rng.normal(0, 1, (300, 30))  # bright, flat shutter
    img[270:, :] = 1000 + rng.normal(0, 1, (30, 300))
    mask = medeq.foreground_mask(img)
    assert not mask[:, :30].any()
    assert not mask[270:, :].any()
    assert mask[150, 150]


def test_constant_image_selects_everything() -> None:
    assert medeq.foreground_mask(np.full((8, 8), 3)).all()


def test_volume_mask_has_the_volume_shape(rng: np.random.Generator) -> None:
    vol = rng.normal(0, 1, (3, 64, 64))
    vol[:, 16:48, 16:48] += 50
    mask = medeq.foreground_mask(vol)
    assert mask.shape == vol.shape
    assert mask[:, 32, 32].all()
    assert not mask[:, 2, 2].any()


def test_ct_mask_keeps_the_body_and_drops_air() -> None:
    image = medeq.read(shared_file("dcmqi__ct-3slice_01.dcm"))
    mask = medeq.foreground_mask(image)[0]
    hu = medeq.modality_values(image)[0]
    assert 0.3 < mask.mean() < 0.8
    assert not mask[:20, :20].any()  # corner: outside the field of view
    outside = hu[~mask]
    assert np.median(outside) < -900  # what is left out is air and padding
    assert np.median(hu[mask]) > -200  # what is kept is mostly tissue


@pytest.mark.parametrize("bad", [np.zeros(5), np.zeros((2, 2, 2, 2)), np.array([["a"]])])
def test_bad_mask_input(bad: np.ndarray) -> None:
    with pytest.raises(medeq.ParameterError, match="non-empty 2-D or 3-D numeric array"):
        medeq.foreground_mask(bad)


def test_cr_collimator_ramp_is_excluded() -> None:
    # WG04 RG2: a pelvis CR with a bright shutter band on the right (columns ~1440-1760)
    # whose inner part is a ramp, not flat, and a sharp-edged band on the left.
    image = medeq.read(shared_file("wg04__RG2_UNC.dcm"))
    mask = medeq.foreground_mask(image)[0]
    assert mask.shape == (2140, 1760)
    assert mask[:, 1520:1680].mean() < 0.05  # the ramp of the right band
    assert mask[:, :150].mean() < 0.05  # the left band
    assert mask[100:600, 1200:1400].mean() < 0.01  # direct exposure beside the hip
    assert mask[300:900, 300:700].mean() > 0.95  # pelvis and sacrum
    assert mask[1400:1800, 1250:1400].mean() > 0.9  # thigh, right next to the band
    values = medeq.modality_values(image)[0]
    band_edge = np.median(values[:, 1700:])
    assert np.median(values[mask]) < band_edge  # what is kept is not shutter


def test_mosaic_keeps_every_tile() -> None:
    # A Siemens mosaic: 36 tiles of 64 x 64 (one brain slice each) in a 384 x 384 image.
    mask = medeq.foreground_mask(medeq.read(shared_file("dcmqats__In_1.dcm")))[0]
    assert mask.mean() > 0.2
    tiles = mask.reshape(6, 64, 6, 64).mean(axis=(1, 3))
    assert (tiles > 0.2).sum() >= 20
    assert (tiles > 0.3).sum() >= 4


def test_small_regions_beside_the_body_still_go(rng: np.random.Generator) -> None:
    img = rng.normal(10, 3, (200, 200))
    img[40:160, 40:160] += 300  # the body
    img[5:12, 180:190] += 300  # a marker: under a tenth of the body's area
    mask = medeq.foreground_mask(img)
    assert mask[100, 100]
    assert not mask[5:12, 180:190].any()


def test_bright_ramp_band_on_a_synthetic_image(rng: np.random.Generator) -> None:
    img = rng.normal(50, 4, (300, 300))
    img[60:240, 40:230] = rng.normal(500, 40, (180, 190))  # the body
    # A shutter on the right: bright at the border, falling away from it in a ramp whose
    # foot differs from row to row, so no column of it is flat.
    foot = np.linspace(150, 750, 300)[:, np.newaxis]
    img[:, 240:] = foot + (1000 - foot) * np.linspace(0, 1, 60) + rng.normal(0, 3, (300, 60))
    mask = medeq.foreground_mask(img)
    assert mask[:, 245:].mean() < 0.02
    assert mask[70:230, 50:220].all()
