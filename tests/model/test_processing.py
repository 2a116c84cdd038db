"""Preprocessing and token counts (eve-v1.md 2.1, 2.4) - no model needed."""

from __future__ import annotations

import pytest
import torch
from eve_model_testutils import make_image

from eve_model import EveImageProcessor, get_preset
from eve_model.config import CLIP_MEAN, CLIP_STD


@pytest.fixture(scope="module")
def proc672():
    return EveImageProcessor.from_config(get_preset("eve-7b"))


@pytest.fixture(scope="module")
def proc1344():
    return EveImageProcessor.from_config(get_preset("eve-7b-hd"))


@pytest.mark.parametrize(("width", "height", "n672", "n1344"), [
    (672, 448, 401, 1569),  # worked example, eve-v1.md 2.4
    (448, 672, 409, None),  # 448 wide x 672 high: 24x16 grid
    (640, 480, 451, 1765),
    (500, 500, 601, 2353),  # square: the maximum
    (1000, 10, 1 + 1 * 25, None),  # extreme aspect: one row of tokens
])
def test_token_counts(proc672, proc1344, width, height, n672, n1344):
    assert proc672.num_image_tokens(width, height) == n672
    if n1344 is not None:
        assert proc1344.num_image_tokens(width, height) == n1344


def test_grid_multiples(proc672, proc1344):
    """Short side a multiple of 28 at 672 and 56 at 1344; longest side = canvas."""
    for w, h in [(672, 448), (333, 517), (1920, 1080), (37, 800)]:
        lay = proc672.layout(w, h)
        assert max(lay.width, lay.height) * proc672.ratio == 672
        assert (lay.width * 2) % 28 == 0 and (lay.height * 2) % 28 == 0
        assert (lay.width * 4) % 56 == 0 and (lay.height * 4) % 56 == 0
        assert proc1344.ratio == 4


def test_canvas_layout_and_mask(proc672):
    image, clip = proc672(make_image(672, 448))
    assert image.shape == (4, 672, 672) and clip.shape == (4, 336, 336)
    assert image.dtype == torch.float32 and clip.dtype == torch.float32
    mask = image[3]
    rows = mask.any(1).nonzero().flatten()
    assert (rows.min(), rows.max()) == (112, 112 + 448 - 1)  # centred: pad 112/448/112
    assert bool(mask.all(0).all()) is False and bool(mask[112:560].all())
    crow = clip[3].any(1).nonzero().flatten()
    assert (crow.min(), crow.max()) == (56, 56 + 224 - 1)
    # padding is the mean colour int(mean*255), CLIP-normalised
    expect = (torch.tensor([int(m * 255) for m in CLIP_MEAN]) / 255 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    assert torch.allclose(image[:3, 0, 0], expect, atol=1e-5)


def test_text_only_canvas(proc672):
    image, clip = proc672(None)
    assert image.shape == (4, 672, 672) and float(image[3].sum()) == 0.0 and float(clip[3].sum()) == 0.0


def test_bad_processor_inputs(proc672):
    with pytest.raises(ValueError, match="PIL"):
        proc672(torch.zeros(3, 10, 10))
    with pytest.raises(ValueError, match="image_size"):
        EveImageProcessor(image_size=700, image_size_clip=336)


def test_config_rejects_bad_geometry():
    with pytest.raises(ValueError, match="image_size"):
        get_preset("eve-7b", image_size=700)
    with pytest.raises(ValueError, match="teacher grid"):
        get_preset("eve-7b", image_size=1008)  # grid 36 is not a multiple of 24
    with pytest.raises(ValueError, match="preset"):
        get_preset("huge")
