"""Image preprocessing of EVE v1 (``train.py`` l.698-765, ``mm_utils.process_images``; eve-v1.md 2.1).

The layout is computed in teacher (CLIP) space and scaled by ``ratio = image_size // image_size_clip``:

1. longest side -> ``image_size_clip``; short side -> ``ceil(Sc * short / long / pc) * pc``
   (whole teacher patches, pc = patch_stride_clip), centred with a padding of whole patches
   ``pre = ((Gc - n_valid) // 2) * pc``;
2. the EVE view uses the same layout times ``ratio`` (longest side = image_size, short side a
   multiple of ``pc * ratio``: 28 at 672, 56 at 1344);
3. both views are pasted on a square canvas filled with the mean colour, CLIP-normalised, and get a
   4th channel: 1 on the image, 0 on the padding.  ``None`` (text-only) gives a blank canvas, mask 0.

Integer arithmetic replaces the reference's float ``ceil`` (identical except for float round-off).

Speed: both views are resized from the raw image (bicubic, as the reference; ~10 ms of CPU for a
~900 px photo, the floor), the teacher view on a per-process helper thread (``parallel=True``),
and normalised in place into one preallocated canvas each - bit-identical to the straightforward
implementation kept in ``tests/model/test_processing.py``.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from .config import CLIP_MEAN, CLIP_STD, EveConfig


@dataclass(frozen=True)
class Layout:
    """Placement of an image on the teacher canvas (pixels at image_size_clip scale)."""

    width: int  # resized width
    height: int  # resized height
    left: int  # padding before, x
    top: int  # padding before, y


class EveImageProcessor:
    """PIL image (or None) -> (image [4,S,S], image_clip [4,Sc,Sc]) float32 tensors.

    ``parallel``: resize the teacher view on a helper thread (one per process) while the calling
    thread resizes the EVE view; the output is the same either way.
    """

    def __init__(self, image_size: int = 672, image_size_clip: int = 336, patch_stride: int = 14,
                 conv_stride: int = 2, patch_stride_clip: int = 14,
                 image_mean: tuple[float, ...] = CLIP_MEAN, image_std: tuple[float, ...] = CLIP_STD,
                 parallel: bool = True) -> None:
        if image_size % image_size_clip:
            raise ValueError(f"image_size={image_size} must be a multiple of image_size_clip={image_size_clip}")
        if image_size_clip % patch_stride_clip:
            raise ValueError(
                f"image_size_clip={image_size_clip} must be a multiple of patch_stride_clip={patch_stride_clip}"
            )
        self.image_size = image_size
        self.image_size_clip = image_size_clip
        self.patch_stride = patch_stride
        self.conv_stride = conv_stride
        self.patch_stride_clip = patch_stride_clip
        self.ratio = image_size // image_size_clip
        if (patch_stride_clip * self.ratio) % (patch_stride * conv_stride):
            raise ValueError(
                f"image_size={image_size}: image_size/image_size_clip*patch_stride_clip="
                f"{patch_stride_clip * self.ratio} must be a multiple of patch_stride*conv_stride="
                f"{patch_stride * conv_stride}"
            )
        self.image_mean = np.asarray(image_mean, dtype=np.float32)
        self.image_std = np.asarray(image_std, dtype=np.float32)
        self.fill = tuple(int(m * 255) for m in image_mean)  # (122, 116, 104) for CLIP
        self._mean_t = torch.from_numpy(self.image_mean)  # float32, 0-dim per channel below
        self._std_t = torch.from_numpy(self.image_std)
        fill = torch.tensor(self.fill, dtype=torch.float32)
        self._pad = ((fill / 255.0 - self._mean_t) / self._std_t).tolist()  # normalised mean colour
        self.parallel = parallel  # resize the teacher view on a helper thread
        self._executor: ThreadPoolExecutor | None = None
        self._pool_pid: int | None = None

    @classmethod
    def from_config(cls, config: EveConfig) -> EveImageProcessor:
        config.validate_vision()
        return cls(config.image_size, config.image_size_clip, config.patch_stride, config.conv_stride,
                   config.patch_stride_clip, tuple(config.image_mean), tuple(config.image_std))

    # ------------------------------------------------------------------------------------------
    def layout(self, width: int, height: int) -> Layout:
        """Teacher-space layout of a width x height image."""
        if width <= 0 or height <= 0:
            raise ValueError(f"image size must be positive, got width={width}, height={height}")
        sc, pc = self.image_size_clip, self.patch_stride_clip
        grid = sc // pc

        def short_side(short: int, long: int) -> int:
            return -(-sc * short // (long * pc)) * pc  # ceil(sc*short/long/pc)*pc, exact

        if width >= height:
            w, h = sc, short_side(height, width)
        else:
            w, h = short_side(width, height), sc
        left = ((grid - w // pc) // 2) * pc
        top = ((grid - h // pc) // 2) * pc
        return Layout(w, h, left, top)

    def grid(self, width: int, height: int) -> tuple[int, int]:
        """(h, w) visual-token grid of a width x height image."""
        lay = self.layout(width, height)
        unit = self.patch_stride * self.conv_stride
        return lay.height * self.ratio // unit, lay.width * self.ratio // unit

    def num_image_tokens(self, width: int, height: int) -> int:
        """Visual tokens spliced into the LLM for a width x height image: 1 + h*(w+1)."""
        h, w = self.grid(width, height)
        return 1 + h * (w + 1)

    # ------------------------------------------------------------------------------------------
    # Fast path, bit-identical to the straightforward one (tests/model/test_processing.py keeps it):
    # each resized channel (PIL split: contiguous uint8) is normalised in place, with the same
    # float32 ops, straight into its window of one preallocated [4,S,S] canvas; only the padding
    # is filled with the normalised mean colour; no float temporaries, permutes or concatenation.
    # (A uint8 -> float32 lookup table, np.take, is exact too but 2x slower than this here.)
    # The teacher view is resized on a helper thread while the caller's thread resizes the EVE
    # view: PIL releases the GIL while resampling, so the two overlap when a second core is free.

    def _pool(self) -> ThreadPoolExecutor | None:
        """One helper thread per process (created lazily: a forked loader worker gets its own)."""
        if not self.parallel:
            return None
        pid = os.getpid()
        if self._pool_pid != pid:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="eve-image")
            self._pool_pid = pid
        return self._executor

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_executor"], state["_pool_pid"] = None, None  # threads do not pickle
        return state

    def _canvas(self, resized: Image.Image | None, lay: Layout | None, scale: int, size: int) -> torch.Tensor:
        """[4, size, size]: normalised mean-colour canvas, the resized RGB image pasted at the layout, mask."""
        out = torch.empty(4, size, size)
        a = out.numpy()
        if resized is None or lay is None:
            for c in range(3):
                a[c].fill(self._pad[c])
            a[3].fill(0.0)
            return out
        w, h, x0, y0 = lay.width * scale, lay.height * scale, lay.left * scale, lay.top * scale
        x1, y1 = x0 + w, y0 + h
        for c, value in enumerate((*self._pad, 0.0)):  # padding only: the image box is written below
            plane = a[c]
            plane[:y0].fill(value)
            plane[y1:].fill(value)
            plane[y0:y1, :x0].fill(value)
            plane[y0:y1, x1:].fill(value)
        for c, band in enumerate(resized.split()):  # contiguous uint8 [h, w] per channel
            a[c, y0:y1, x0:x1] = np.asarray(band)  # uint8 -> float32
            region = out[c, y0:y1, x0:x1]
            region.div_(255.0).sub_(self._mean_t[c]).div_(self._std_t[c])  # the spec's float32 ops, in place
        a[3, y0:y1, x0:x1].fill(1.0)
        return out

    def _view(self, image: Image.Image, lay: Layout, scale: int, size: int) -> torch.Tensor:
        resized = image.resize((lay.width * scale, lay.height * scale), Image.Resampling.BICUBIC)
        return self._canvas(resized, lay, scale, size)

    def __call__(self, image: Image.Image | None) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (image [4, image_size, image_size], image_clip [4, image_size_clip, image_size_clip])."""
        if image is None:
            return (self._canvas(None, None, self.ratio, self.image_size),
                    self._canvas(None, None, 1, self.image_size_clip))
        if not isinstance(image, Image.Image):
            raise ValueError(f"image: expected a PIL.Image.Image or None, got {type(image).__name__}")
        if image.mode != "RGB":
            image = image.convert("RGB")
        image.load()  # decode once, before two threads read it
        lay = self.layout(*image.size)
        pool = self._pool()
        if pool is None:
            return (self._view(image, lay, self.ratio, self.image_size),
                    self._view(image, lay, 1, self.image_size_clip))
        teacher = pool.submit(self._view, image, lay, 1, self.image_size_clip)
        try:
            eve = self._view(image, lay, self.ratio, self.image_size)
        finally:
            clip = teacher.result()
        return eve, clip
