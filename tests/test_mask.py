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
