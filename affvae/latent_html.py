"""The interactive latent map: one self-contained HTML page of an evaluation's 2-D embedding.

``embedding.png`` shows where the classes fall; this page answers the next question,
*which object is that point?*  Hovering a point shows the object's thumbnail, its
path, class, predicted class and novelty.  Everything the page needs (the points as
JSON, the thumbnails as PNG data URIs, a small script drawing an SVG scatter) is in
the one file, so it opens offline in any browser, from a run folder or an MLflow
artifact view, and can be mailed around.

The colours are those of :func:`affvae.plots.class_colours` (the PNG's), unseen
classes are black-edged stars as in the PNG, and very large evaluations are cut
to a class-stratified random sample of :data:`MAX_POINTS` (said on the page) so the
file stays a few MB.  Opening the page with ``#selftest`` after its address makes
its script hover one point by itself and write what the tooltip shows into
``<pre id="selftest">``: a headless browser's ``--dump-dom`` then shows that the
page works.
"""

from __future__ import annotations

import base64
import html
import json
import os
import re
import struct
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np

from affvae.errors import DataError
from affvae.labels import as_labels
from affvae.provenance import atomic_write

#: At most this many points on one page (a class-stratified sample beyond).
MAX_POINTS = 3000
#: Thumbnails are downsampled to at most this many pixels a side.
THUMB_PX = 64
#: All thumbnails of a page together hold at most this many pixels (1,000 of 64 x 64): a
#: page of more points gets smaller thumbnails, so that even noisy ones (which PNG cannot
#: compress) keep the file at a few MB.
THUMB_PIXELS = 1000 * 64 * 64
UNKNOWN_COLOUR = "#b3b3b3"  # the PNG's "0.7" grey


def thumbnails(x, size: int = THUMB_PX) -> np.ndarray:
    """(N, h, w) uint8 pictures of items: 2D items as they are, 3D volumes projected along z.

    The projection (sum over z) shows the whole shape at once, as the decoded
    figures do.  Items larger than ``size`` are block-averaged down to at most
    ``size`` pixels a side; each picture is scaled to 0-255 on its own range (a
    flat item is black).
    """
    x = np.asarray(x)
    if x.ndim == 5 and x.shape[1] == 1:  # (N, 1, D, H, W)
        x = x[:, 0]
    if x.ndim == 4:
        x = x.sum(axis=1)
    if x.ndim != 3:
        raise DataError(f"thumbnails need items (N, H, W) or volumes (N, D, H, W), got shape {x.shape}")
    x = np.asarray(x, dtype=np.float64)
    n, h, w = x.shape
    f = -(-max(h, w) // size)  # ceil: the smallest integer factor that fits
    if f > 1:
        h2, w2 = max(1, h // f), max(1, w // f)
        x = x[:, :h2 * f, :w2 * f].reshape(n, h2, f, w2, f).mean(axis=(2, 4))
    lo = x.min(axis=(1, 2), keepdims=True)
    span = x.max(axis=(1, 2), keepdims=True) - lo
    scale = np.divide(255.0, span, out=np.zeros_like(span), where=span > 0)
    return np.round((x - lo) * scale).astype(np.uint8)


def png_bytes(img: np.ndarray) -> bytes:
    """A greyscale 8-bit PNG of a (h, w) uint8 array (each row "Sub"-filtered, zlib level 9)."""
    img = np.ascontiguousarray(img, dtype=np.uint8)
    if img.ndim != 2 or 0 in img.shape:
        raise DataError(f"a PNG needs a non-empty (h, w) array, got shape {img.shape}")
    h, w = img.shape
    sub = np.diff(img, axis=1, prepend=np.uint8(0))  # uint8 wraps modulo 256, as PNG wants
    raw = np.concatenate([np.ones((h, 1), np.uint8), sub], axis=1).tobytes()

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def png_data_uri(img: np.ndarray) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(img)).decode("ascii")


def stratified_subset(labels, cap: int = MAX_POINTS, seed: int = 0) -> np.ndarray:
    """Sorted indices of at most ``cap`` items, a random sample keeping every class in proportion.

    Each class keeps at least one item, so a small unseen class never vanishes
    from a large page.  All indices when there are no more than ``cap`` items.
    """
    labels = as_labels(labels)
    n = labels.size
    if n <= cap:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    share = counts * cap / n
    take = np.minimum(np.maximum(1, np.floor(share)).astype(int), counts)
    for j in np.argsort(np.floor(share) - share, kind="stable")[:max(0, cap - int(take.sum()))]:
        take[j] = min(take[j] + 1, counts[j])  # the largest remainders get the places left
    picks = [rng.choice(np.flatnonzero(inverse == j), k, replace=False) for j, k in enumerate(take)]
    return np.sort(np.concatenate(picks))


def _hex(rgba) -> str:
    return "#" + "".join(f"{round(255 * v):02x}" for v in rgba[:3])


def _number(v: float) -> float | None:
    return round(float(v), 4) if np.isfinite(v) else None


def write_latent_map_html(path: str | os.PathLike, xy, labels, predicted, novelty, images,
                          unseen: Sequence[str] = (), title: str = "", paths: Sequence[str] | None = None,
                          max_points: int = MAX_POINTS, seed: int = 0) -> Path:
    """Write the interactive latent map of N evaluated items to ``path`` (atomically).

    ``xy`` (N, 2) embedding coordinates, ``labels`` the true classes (``""`` if
    unknown), ``predicted`` and ``novelty`` (N,) as in ``predictions.csv``,
    ``images`` (N, h, w) uint8 thumbnails (see :func:`thumbnails`; a page of more
    than 1,000 points shrinks them, :data:`THUMB_PIXELS`), ``unseen`` the classes
    not trained on (drawn as stars), ``paths`` the items' file names.  Beyond
    ``max_points`` items the page shows a class-stratified sample (``seed``).
    """
    from affvae.plots import class_colours

    xy = np.asarray(xy, dtype=np.float64)
    labels, predicted = as_labels(labels), as_labels(predicted)
    novelty = np.asarray(novelty, dtype=np.float64).reshape(-1)
    images = np.asarray(images)
    n = labels.size
    paths = [str(p) for p in paths] if paths is not None else [f"item {i}" for i in range(n)]
    if xy.shape != (n, 2) or predicted.size != n or novelty.size != n or len(images) != n or len(paths) != n:
        raise DataError(f"latent map page: {n} labels but xy {xy.shape}, {predicted.size} predictions, "
                        f"{novelty.size} novelties, {len(images)} thumbnails and {len(paths)} paths")
    keep = stratified_subset(labels, max_points, seed)
    unseen = {str(c) for c in unseen}
    colours = class_colours(np.unique(labels).tolist(), unseen)
    classes = list(colours)  # seen, then unseen
    table = [{"name": c, "colour": _hex(colours[c]), "unseen": c in unseen} for c in classes]
    if (labels == "").any():
        table.append({"name": "unknown", "colour": UNKNOWN_COLOUR, "unseen": False, "unknown": True})
    side = max(8, min(THUMB_PX, int(np.sqrt(THUMB_PIXELS / max(1, len(keep))))))
    thumbs = thumbnails(images[keep], size=side)  # uint8 thumbnails pass unchanged unless too big
    index = {c: i for i, c in enumerate(classes)}
    pts = xy[keep]
    lo = pts.min(axis=0) if len(pts) else np.zeros(2)
    span = float(np.ptp(pts, axis=0).max()) if len(pts) else 0.0
    unit = (pts - lo) / (span or 1.0)  # one scale for both axes: the embedding's shape is kept
    data = {
        "classes": table, "n_total": int(n), "n_shown": int(len(keep)),
        "x": [round(float(v), 5) for v in unit[:, 0]], "y": [round(float(v), 5) for v in unit[:, 1]],
        "c": [index.get(labels[i], len(classes)) for i in keep],
        "pred": [str(predicted[i]) for i in keep], "nov": [_number(novelty[i]) for i in keep],
        "path": [paths[i] for i in keep], "img": [png_data_uri(t) for t in thumbs],
    }
    note = f"{n:,} items" if len(keep) == n else \
        f"showing {len(keep):,} of {n:,} items (a random sample, every class in proportion)"
    if len(keep) and thumbs.shape[1:] != images.shape[1:]:
        note += f"; thumbnails reduced to {thumbs.shape[2]} x {thumbs.shape[1]} px to keep the file small"
    blob = json.dumps(data, separators=(",", ":"), ensure_ascii=False).replace("<", "\\u003c")
    fill = {"TITLE": html.escape(title or "latent map"), "NOTE": html.escape(note), "DATA": blob}
    page = re.sub(r"%(TITLE|NOTE|DATA)%", lambda m: fill[m[1]], _PAGE)
    path = Path(path)
    with atomic_write(path, "wb") as fh:
        fh.write(page.encode("utf-8"))
    return path


_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>%TITLE%</title>
<style>
body { margin: 0; font: 14px/1.4 system-ui, "Segoe UI", Helvetica, Arial, sans-serif; color: #222; background: #f4f4f4; }
header { padding: 12px 20px 6px; }
h1 { font-size: 18px; margin: 0 0 2px; }
.note { color: #555; font-size: 13px; }
main { display: flex; gap: 14px; padding: 6px 20px 20px; align-items: flex-start; }
#plot { flex: 1 1 0; min-width: 0; max-width: 1000px; height: auto; background: #fff; border: 1px solid #d0d0d0; border-radius: 4px; }
#plot .pt { cursor: pointer; }
#plot .pt.hl { stroke: #000; stroke-width: 2.5; }
#plot text { font-size: 13px; font-weight: 600; paint-order: stroke; stroke: #fff; stroke-width: 4px; }
#legend { flex: 0 0 auto; min-width: 150px; max-height: 86vh; overflow: auto; background: #fff; border: 1px solid #d0d0d0; border-radius: 4px; padding: 8px 12px; }
#legend h2 { font-size: 13px; margin: 0 0 6px; color: #555; font-weight: 600; }
.item { display: flex; align-items: center; gap: 7px; padding: 2px 0; cursor: pointer; user-select: none; }
.item.off { opacity: 0.3; }
.item .n { color: #888; font-size: 12px; margin-left: auto; padding-left: 10px; }
#tip { position: fixed; display: none; pointer-events: none; z-index: 10; background: #fff; border: 1px solid #999; border-radius: 6px; box-shadow: 0 3px 10px rgba(0,0,0,0.25); padding: 8px 10px; font-size: 13px; max-width: 300px; }
#tip img { display: block; width: 128px; height: 128px; object-fit: contain; image-rendering: pixelated; background: #000; margin: 0 auto 6px; }
#tip td { padding: 1px 0; vertical-align: top; }
#tip td:first-child { color: #777; padding-right: 10px; }
#tip .path { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 12px; word-break: break-all; }
.ok { color: #1a7f2e; } .bad { color: #c62828; }
</style>
</head>
<body data-points="0">
<header>
<h1>%TITLE%</h1>
<div class="note">%NOTE%. Stars: classes not trained on. Hover a point for the object; click a class to hide it.
Novelty: distance to the nearest class centre in units of that class's spread (about 1 for a typical member).</div>
</header>
<main>
<svg id="plot" viewBox="0 0 900 700" role="img" aria-label="latent map"></svg>
<div id="legend"><h2>classes (<span id="n-drawn">0</span> points)</h2></div>
</main>
<div id="tip"><img id="tip-img" alt="thumbnail"><table>
<tr><td>path</td><td class="path" id="tip-path"></td></tr>
<tr><td>class</td><td id="tip-class"></td></tr>
<tr><td>predicted</td><td id="tip-pred"></td></tr>
<tr><td>novelty</td><td id="tip-nov"></td></tr>
</table></div>
<pre id="selftest" hidden></pre>
<script type="application/json" id="data">%DATA%</script>
<script>
"use strict";
const D = JSON.parse(document.getElementById("data").textContent);
const svg = document.getElementById("plot");
const NS = svg.namespaceURI;  // the SVG namespace, without writing out its address
const W = 900, H = 700, PAD = 40;
const n = D.x.length;
const R = n <= 300 ? 6 : n <= 1200 ? 4.5 : 3.5;  // seen points; stars are bigger
const cls = i => D.classes[D.c[i]] || {name: "unknown", colour: "#b3b3b3", unseen: false, unknown: true};

function el(tag, attrs, parent) {
  const e = document.createElementNS(NS, tag);
  for (const k in attrs) e.setAttribute(k, attrs[k]);
  if (parent) parent.appendChild(e);
  return e;
}
function starPath(r) {
  let d = "";
  for (let k = 0; k < 10; k++) {
    const a = Math.PI * k / 5 - Math.PI / 2, q = k % 2 ? 0.45 * r : r;
    d += (k ? "L" : "M") + (q * Math.cos(a)).toFixed(2) + "," + (q * Math.sin(a)).toFixed(2);
  }
  return d + "Z";
}
const STAR = starPath(2.6 * R);

// the points: unit coordinates centred in the frame, y up
let mx = 0, my = 0;
for (let i = 0; i < n; i++) { mx = Math.max(mx, D.x[i]); my = Math.max(my, D.y[i]); }
const s = Math.min((W - 2 * PAD) / (mx || 1), (H - 2 * PAD) / (my || 1));
const px = i => W / 2 + (D.x[i] - mx / 2) * s, py = i => H / 2 - (D.y[i] - my / 2) * s;
const groups = {};
const order = D.classes.map((c, k) => k).sort((a, b) =>
  (D.classes[a].unknown ? 0 : D.classes[a].unseen ? 2 : 1) - (D.classes[b].unknown ? 0 : D.classes[b].unseen ? 2 : 1));
for (const k of order) groups[k] = el("g", {}, svg);
for (let i = 0; i < n; i++) {
  const c = cls(i), g = groups[D.c[i]] || svg;
  const attrs = {"class": "pt", "data-i": i, fill: c.colour};
  if (c.unseen) {
    el("path", Object.assign(attrs, {"class": "pt star", d: STAR, stroke: "#000", "stroke-width": 1,
      transform: "translate(" + px(i).toFixed(1) + "," + py(i).toFixed(1) + ")"}), g);
  } else {
    el("circle", Object.assign(attrs, {cx: px(i).toFixed(1), cy: py(i).toFixed(1), r: R,
      "fill-opacity": 0.85, stroke: "#fff", "stroke-width": 0.6}), g);
  }
}
// each unseen class named above its points, as in embedding.png
D.classes.forEach((c, k) => {
  if (!c.unseen) return;
  const idx = []; for (let i = 0; i < n; i++) if (D.c[i] === k) idx.push(i);
  if (!idx.length) return;
  const xs = idx.map(px).sort((a, b) => a - b), top = Math.min(...idx.map(py));
  const t = el("text", {x: xs[xs.length >> 1], y: Math.max(14, top - 2.6 * R - 6), "text-anchor": "middle"}, groups[k]);
  t.textContent = c.name + " (unseen)";
});
document.body.dataset.points = n;
document.getElementById("n-drawn").textContent = n + (D.n_total > n ? " of " + D.n_total : "");

// the legend: a marker, the name and the count; a click hides or shows the class
const legend = document.getElementById("legend");
const drawn = D.classes.map(() => 0);
for (let i = 0; i < n; i++) drawn[D.c[i]]++;
D.classes.forEach((c, k) => {
  const row = document.createElement("div");
  row.className = "item";
  const m = el("svg", {width: 18, height: 18, viewBox: "-9 -9 18 18"}, row);
  if (c.unseen) el("path", {d: starPath(8.5), fill: c.colour, stroke: "#000", "stroke-width": 1}, m);
  else el("circle", {r: 6, fill: c.colour}, m);
  row.appendChild(document.createTextNode(c.name + (c.unseen ? " (unseen)" : "")));
  const cnt = document.createElement("span"); cnt.className = "n"; cnt.textContent = drawn[k]; row.appendChild(cnt);
  row.addEventListener("click", () => {
    const off = row.classList.toggle("off");
    if (groups[k]) groups[k].style.display = off ? "none" : "";
  });
  legend.appendChild(row);
});

// the tooltip
const tip = document.getElementById("tip"), img = document.getElementById("tip-img");
const field = id => document.getElementById("tip-" + id);
function show(i, ev) {
  const c = cls(i), p = D.pred[i];
  img.src = D.img[i];
  field("path").textContent = D.path[i];
  field("class").textContent = c.unknown ? "unknown" : c.name + (c.unseen ? " (unseen)" : "");
  const pred = field("pred");
  pred.textContent = p;
  pred.className = c.unknown || c.unseen ? "" : p === c.name ? "ok" : "bad";
  field("nov").textContent = D.nov[i] === null ? "n/a" : D.nov[i].toFixed(2);
  tip.style.display = "block";
  move(ev);
}
function move(ev) {
  const w = tip.offsetWidth, h = tip.offsetHeight;
  let x = ev.clientX + 16, y = ev.clientY + 16;
  if (x + w > innerWidth - 4) x = Math.max(4, ev.clientX - w - 16);
  if (y + h > innerHeight - 4) y = Math.max(4, ev.clientY - h - 16);
  tip.style.left = x + "px"; tip.style.top = y + "px";
}
let current = null;
svg.addEventListener("mouseover", ev => {
  const t = ev.target;
  if (!t.classList.contains("pt")) return;
  if (current) current.classList.remove("hl");
  current = t; t.classList.add("hl");
  show(+t.dataset.i, ev);
});
svg.addEventListener("mousemove", ev => { if (current) move(ev); });
svg.addEventListener("mouseout", ev => {
  if (ev.target !== current) return;
  current.classList.remove("hl"); current = null;
  tip.style.display = "none";
});

// #selftest: hover one point (a star if there is one) and report what the tooltip shows
if (location.hash === "#selftest" && n) {
  const target = svg.querySelector(".star") || svg.querySelector(".pt");
  const b = target.getBoundingClientRect();
  target.dispatchEvent(new MouseEvent("mouseover", {bubbles: true, clientX: b.x + b.width / 2, clientY: b.y + b.height / 2}));
  const report = tries => {
    if (!(img.complete && img.naturalWidth) && tries < 200) return setTimeout(() => report(tries + 1), 10);
    document.getElementById("selftest").textContent = JSON.stringify({
      index: +target.dataset.i, shown: tip.style.display === "block",
      path: field("path").textContent, "class": field("class").textContent,
      predicted: field("pred").textContent, novelty: field("nov").textContent,
      img_loaded: img.naturalWidth > 0, img_width: img.naturalWidth, img_height: img.naturalHeight});
    document.body.dataset.selftest = "done";
  };
  report(0);
}
</script>
</body>
</html>
"""
