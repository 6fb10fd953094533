"""Glyphs of the alphanumeric data, rasterised from DejaVu Sans (shipped with matplotlib).

A glyph's outline polygons are filled with the even-odd rule on a fine grid,
centred on the outline's box; the simulator rotates and area-averages these masks
down to the image size, and the SOAP reference set renders the paper's glyphs from
them.
"""

from __future__ import annotations

import functools
import string

import numpy as np
import torch
import torch.nn.functional as F

from affvae.transforms.augment import angle_to_matrix, rotate

#: The glyphs of the affinity-VAE paper's 2D experiments.
PAPER_GLYPHS = tuple("aebdpijz2kxu")
#: Every glyph the alphanumeric simulator can render.
ALL_GLYPHS = tuple(string.ascii_lowercase + string.digits)


@functools.lru_cache(maxsize=None)
def glyph_mask(ch: str, size: int, oversample: int, fill: float, glyph_size: str = "natural") -> np.ndarray:
    """A glyph rasterised on a ``size*oversample`` grid, centred on its outline's box.

    ``glyph_size`` "natural": scaled by the height of a capital, so every glyph keeps
    its size relative to the others (an 'i' stays narrow, a 'z' short beside a '2');
    "box": each glyph scaled so the longer side of its own outline box is that height.
    """
    from matplotlib.font_manager import FontProperties
    from matplotlib.path import Path as MplPath
    from matplotlib.textpath import TextPath

    prop = FontProperties(family="DejaVu Sans")
    path = TextPath((0, 0), ch, size=1.0, prop=prop)
    ext = path.get_extents()
    if glyph_size == "natural":
        cap = TextPath((0, 0), "H", size=1.0, prop=prop).get_extents().height
    else:
        cap = max(ext.width, ext.height)
    cx, cy = (ext.x0 + ext.x1) / 2, (ext.y0 + ext.y1) / 2
    n = size * oversample
    scale = fill * n / cap
    # Pixel centres in glyph units; image rows go down, glyph y goes up.
    u = (np.arange(n) + 0.5 - n / 2) / scale
    gx, gy = np.meshgrid(u + cx, -u + cy)
    pts = np.stack([gx.ravel(), gy.ravel()], 1)
    inside = np.zeros(len(pts), dtype=bool)
    for poly in path.to_polygons(closed_only=True):
        inside ^= MplPath(poly).contains_points(pts)  # even-odd rule keeps holes open
    return inside.reshape(n, n).astype(np.float32)


def render_glyphs(chars, angles, size: int, *, oversample: int = 4, fill: float = 0.55,
                  glyph_size: str = "natural") -> np.ndarray:
    """Binary glyphs ``(N, size, size)`` float32, ``chars[i]`` rotated by ``angles[i]`` degrees.

    The fine masks are rotated as one batch (bilinear), area-averaged down to the
    image size and thresholded at one half.
    """
    masks = np.stack([glyph_mask(c, size, oversample, fill, glyph_size) for c in chars])
    fine = rotate(torch.from_numpy(masks), torch.from_numpy(angle_to_matrix(angles)))
    coarse = F.avg_pool2d(fine.unsqueeze(1), oversample).squeeze(1)
    return (coarse >= 0.5).to(torch.float32).numpy()
