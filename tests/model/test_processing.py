"""Preprocessing and token counts (eve-v1.md 2.1, 2.4) - no model needed."""

from __future__ import annotations

import pytest
import torch
from support.eve_model_testutils import make_image

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


# --- the fast path against a straightforward reference ---------------------------------------
def reference_process(proc, image):
    """The processor as first written (eve-v1.md 2.1): convert, resize the raw image twice, float
    arithmetic (x/255 - mean)/std on a mean-colour canvas, mask channel.  Kept as the spec."""
    import numpy as np
    from PIL import Image

    mean = torch.tensor(proc.image_mean)[:, None, None]
    std = torch.tensor(proc.image_std)[:, None, None]
    fill = torch.tensor(proc.fill, dtype=torch.float32)[:, None, None]
    if image is not None:
        image = image.convert("RGB")
        lay = proc.layout(*image.size)
    views = []
    for scale, size in ((proc.ratio, proc.image_size), (1, proc.image_size_clip)):
        out = torch.empty(4, size, size)
        out[:3] = (fill / 255.0 - mean) / std
        out[3] = 0.0
        if image is not None:
            w, h, x0, y0 = lay.width * scale, lay.height * scale, lay.left * scale, lay.top * scale
            pixels = torch.from_numpy(np.array(image.resize((w, h), Image.Resampling.BICUBIC))).permute(2, 0, 1)
            region = out[:3, y0 : y0 + h, x0 : x0 + w]
            region.copy_(pixels)
            region.div_(255.0).sub_(mean).div_(std)
            out[3, y0 : y0 + h, x0 : x0 + w] = 1.0
        views.append(out)
    return tuple(views)


def _modes(image):
    return {"RGB": image, "L": image.convert("L"), "RGBA": image.convert("RGBA"),
            "P": image.convert("P", palette=1, colors=64)}


@pytest.mark.parametrize("parallel", [True, False])
@pytest.mark.parametrize(("width", "height"), [
    (672, 448), (448, 672), (640, 480), (500, 500), (1000, 10), (10, 1000), (1023, 767), (333, 517), (1920, 1080), (37, 29),
])
def test_fast_path_is_bit_identical(proc672, width, height, parallel):
    """Max abs difference 0: the uint8 lookup table is built with the same float32 ops."""
    proc = EveImageProcessor.from_config(get_preset("eve-7b"))
    proc.parallel = parallel
    for mode, image in _modes(make_image(width, height, seed=width * 7 + height)).items():
        got, want = proc(image), reference_process(proc, image)
        for g, w in zip(got, want):
            assert g.shape == w.shape and g.dtype == w.dtype
            assert torch.equal(g, w), (mode, float((g - w).abs().max()))


def test_fast_path_hd_and_text_only(proc1344):
    image = make_image(900, 700, seed=3)
    for a, b in zip(proc1344(image), reference_process(proc1344, image)):
        assert torch.equal(a, b)
    for a, b in zip(proc1344(None), reference_process(proc1344, None)):
        assert torch.equal(a, b)


def test_processor_pickles_and_forks(proc672):
    """The helper thread is per process; a pickled (spawned) or forked copy makes its own."""
    import multiprocessing as mp
    import pickle

    proc672(make_image(64, 48))  # starts the helper thread here
    copy = pickle.loads(pickle.dumps(proc672))
    image = make_image(300, 200, seed=5)
    assert all(torch.equal(a, b) for a, b in zip(copy(image), proc672(image)))
    ctx = mp.get_context("fork")  # the fork copies the parent's (dead-in-the-child) helper thread
    queue = ctx.Queue()
    child = ctx.Process(target=_shapes_in_child, args=(proc672, image, queue))  # not pickled: forked
    child.start()
    child.join(60)
    if child.is_alive():
        child.kill()
        pytest.fail("processor hung in a forked child")
    assert queue.get(timeout=5) == [(4, 672, 672), (4, 336, 336)]


def _shapes_in_child(proc, image, queue):
    queue.put([tuple(t.shape) for t in proc(image)])
