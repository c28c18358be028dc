"""Synthetic data sets, drawn from a seed: ``bananas`` (the chapter's layout, one banana per image)
and ``shapes`` (a COCO folder, several small and large objects per image), both over cluttered
backgrounds. Every image has its own random stream, so a set's files are byte-identical whichever
process draws them and however many images the set has.
"""

from __future__ import annotations

import colorsys
import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from rich.progress import track

from pipeline.data.core import BANANA_COLUMNS, SPLITS

# Bump when a generator's output changes, so cached data sets are rebuilt.
GENERATOR_VERSION = 1
SHAPE_CLASSES = ["circle", "triangle", "square"]


# ---------------------------------------------------------------------------
# Synthetic generators: shared pieces
# ---------------------------------------------------------------------------

def _image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    # One stream per image: an image does not change when n_train or n_val does.
    return np.random.default_rng([seed, SPLITS.index(split), index])


def _hsv(h: float, s: float, v: float) -> tuple[int, int, int]:
    return tuple(int(round(255 * c)) for c in colorsys.hsv_to_rgb(h % 1.0, s, v))


def _random_color(rng: np.random.Generator, yellowish: bool = False) -> tuple[int, int, int]:
    if yellowish:  # close to a banana's hue, so colour alone does not find the banana
        return _hsv(rng.uniform(0.11, 0.17), rng.uniform(0.5, 1.0), rng.uniform(0.7, 1.0))
    return _hsv(rng.uniform(), rng.uniform(0.0, 1.0), rng.uniform(0.15, 1.0))


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A varied backdrop, float32 [size, size, 3] in 0..255: gradient, blotches, stripes or tiles."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    c1, c2 = (np.array(_random_color(rng), np.float32) for _ in range(2))
    angle = rng.uniform(0, 2 * np.pi)
    along = xx * np.cos(angle) + yy * np.sin(angle)
    kind = rng.choice(4, p=[0.3, 0.3, 0.2, 0.2])
    if kind == 0:  # linear gradient
        g = (along - along.min()) / (np.ptp(along) + 1e-6)
    elif kind == 1:  # smooth blotches, like foliage or a patterned cloth
        k = int(rng.integers(3, 12))
        low = Image.fromarray((rng.uniform(0, 255, (k, k))).astype(np.uint8))
        g = np.asarray(low.resize((size, size), Image.Resampling.BICUBIC), np.float32) / 255
    elif kind == 2:  # wavy stripes, like wood grain
        wobble = 0.03 * np.sin(2 * np.pi * rng.uniform(1, 4) * (xx * np.sin(angle) - yy * np.cos(angle)))
        g = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(3, 20) * (along + wobble))
    else:  # tiles
        n = rng.uniform(3, 12)
        g = ((np.floor(xx * n) + np.floor(yy * n)) % 2).astype(np.float32)
    img = c1 + (c2 - c1) * g[..., None]
    if rng.uniform() < 0.5:  # grain on half the backdrops only: noise makes PNGs large
        img = img + rng.normal(0, rng.uniform(1, 6), (size, size, 1)).astype(np.float32)
    return img


def _draw_clutter(draw: ImageDraw.ImageDraw, rng: np.random.Generator, size: int, n: int,
                  kinds: tuple[str, ...], p_yellow: float) -> None:
    """Unlabelled distractors drawn onto an image of side ``size``."""
    for _ in range(n):
        kind = kinds[rng.integers(len(kinds))]
        color = _random_color(rng, yellowish=rng.uniform() < p_yellow)
        cx, cy = rng.uniform(0, size, 2)
        r = size * np.exp(rng.uniform(np.log(0.02), np.log(0.25)))
        width = max(1, int(size * rng.uniform(0.003, 0.02)))
        if kind == "blob":  # a rotated ellipse
            t = np.linspace(0, 2 * np.pi, 40, endpoint=False)
            ex, ey = r * np.cos(t), r * rng.uniform(0.2, 1.0) * np.sin(t)
            a = rng.uniform(0, np.pi)
            draw.polygon(list(zip(cx + ex * np.cos(a) - ey * np.sin(a), cy + ex * np.sin(a) + ey * np.cos(a))),
                         fill=color)
        elif kind == "arc":  # curved like a banana but flat and untapered: a hard negative
            start = rng.uniform(0, 360)
            draw.arc([cx - r, cy - r, cx + r, cy + r], start, start + rng.uniform(40, 150), fill=color,
                     width=max(width, int(r * rng.uniform(0.05, 0.3))))
        elif kind == "rect":
            draw.rectangle([cx - r, cy - r * rng.uniform(0.2, 1), cx + r, cy + r * rng.uniform(0.2, 1)], fill=color)
        elif kind == "polygon":
            angles = np.sort(rng.uniform(0, 2 * np.pi, rng.integers(4, 8)))
            radii = r * rng.uniform(0.4, 1.0, len(angles))
            draw.polygon([(cx + a * np.cos(t), cy + a * np.sin(t)) for t, a in zip(angles, radii)], fill=color)
        elif kind == "line":
            x2, y2 = rng.uniform(0, size, 2)
            draw.line([cx, cy, x2, y2], fill=color, width=width)
        elif kind == "zigzag":
            pts = np.cumsum(rng.uniform(-r, r, (int(rng.integers(3, 7)), 2)), axis=0) + (cx, cy)
            draw.line([tuple(p) for p in pts], fill=color, width=width)
        elif kind == "cross":
            arm = r * 0.6
            draw.line([cx - arm, cy, cx + arm, cy], fill=color, width=max(width, int(arm / 3)))
            draw.line([cx, cy - arm, cx, cy + arm], fill=color, width=max(width, int(arm / 3)))
        elif kind == "star":
            t = rng.uniform(0, 2 * np.pi) + np.arange(10) * np.pi / 5
            rad = np.where(np.arange(10) % 2 == 0, r * 0.6, r * 0.25)
            draw.polygon([(cx + a * np.cos(b), cy + a * np.sin(b)) for a, b in zip(rad, t)], fill=color)


def _finish(img: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """Sensor-like noise on some images, then uint8 PIL."""
    if rng.uniform() < 0.4:
        img = img + rng.normal(0, rng.uniform(0.5, 2.5), img.shape).astype(np.float32)
    return Image.fromarray(np.clip(img, 0, 255).round().astype(np.uint8))


def _mask_box(coverage: np.ndarray) -> tuple[int, int, int, int]:
    """Tight (x1, y1, x2, y2) in pixel edges of the pixels at least half covered
    (of the most covered ones, for an object too thin to half-cover any pixel)."""
    ys, xs = np.nonzero(coverage >= min(0.5, coverage.max()))
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


# ---------------------------------------------------------------------------
# Bananas
# ---------------------------------------------------------------------------

def _banana_geometry(rng: np.random.Generator, length: float) -> dict:
    """Random banana shape: an arc of half-angle phi and radius R, tapered, with a stem."""
    phi = np.deg2rad(rng.uniform(25, 65))
    g = {"phi": phi, "R": length / (2 * np.sin(phi)), "w0": length * rng.uniform(0.08, 0.12)}
    g["wb"], g["ws"] = 0.35 * g["w0"], 0.28 * g["w0"]  # blossom end, stem end half widths
    g["stem"] = length * rng.uniform(0.05, 0.09)
    g["half"] = int(np.ceil(np.hypot(g["R"] * np.sin(phi), g["R"] * (1 - np.cos(phi)) / 2)
                            + g["w0"] + g["stem"])) + 3
    return g


def _banana_fields(g: dict, theta: float, flip: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Signed distance sd (pixels, <0 inside), position t along the arc (0 blossom, 1 stem)
    and position q across it (-1 concave edge, +1 convex edge), each [C, C]."""
    half, phi, R = g["half"], g["phi"], g["R"]
    y, x = np.mgrid[-half:half, -half:half].astype(np.float32) + 0.5
    u = x * np.cos(theta) + y * np.sin(theta)
    v = -x * np.sin(theta) + y * np.cos(theta)
    u = -u if flip else u
    cy = R * (1 + np.cos(phi)) / 2  # arc centre, so the arc is centred on the canvas
    r = np.hypot(u, v - cy)
    t = (np.arctan2(u, cy - v) + phi) / (2 * phi)
    arc_len = 2 * phi * R
    shape = np.sin(np.pi * np.clip(t, 0, 1)) ** 0.6
    end_width = np.where(t < 0.5, g["wb"], g["ws"])
    w = end_width + (g["w0"] - end_width) * shape
    past_ends = np.maximum(-t, t - 1) * arc_len
    sd_body = np.maximum(np.abs(r - R) - w, past_ends)
    t_stem = g["stem"] / arc_len
    sd_stem = np.maximum(np.abs(r - R) - g["ws"], np.maximum(1 - t, t - 1 - t_stem) * arc_len)
    tip = (-R * np.sin(phi), cy - R * np.cos(phi))
    sd_cap = np.hypot(u - tip[0], v - tip[1]) - g["wb"]  # the blunt, rounded blossom end
    sd = np.minimum(np.minimum(sd_body, sd_stem), sd_cap)
    return sd, t, np.clip((r - R) / w, -1, 1)


def _banana_layer(rng: np.random.Generator, length: float) -> tuple[np.ndarray, np.ndarray]:
    """A shaded banana on a square canvas: rgb float32 [C, C, 3] and coverage [C, C] in 0..1."""
    g = _banana_geometry(rng, length)
    sd, t, q = _banana_fields(g, rng.uniform(0, 2 * np.pi), bool(rng.integers(2)))
    base = np.array(_hsv(rng.uniform(0.12, 0.19), rng.uniform(0.65, 0.9), rng.uniform(0.85, 1.0)), np.float32)
    light = rng.choice([-1.0, 1.0])
    # A rounded body: darker towards both edges, lit from one side, with a faint ridge.
    shade = 1 - 0.4 * q**2 + 0.12 * light * q - 0.1 * np.exp(-((q - 0.35) / 0.12) ** 2)
    rgb = base * shade[..., None]
    brown = np.array(_hsv(0.08, 0.7, rng.uniform(0.2, 0.35)), np.float32)
    stem = np.array(_hsv(rng.uniform(0.1, 0.2), 0.6, rng.uniform(0.35, 0.55)), np.float32)
    tip_mix = np.clip((0.05 - t) / 0.04, 0, 1)[..., None]
    stem_mix = np.clip((t - 0.93) / 0.07, 0, 1)[..., None]
    rgb = rgb * (1 - tip_mix) + brown * shade[..., None] * tip_mix
    rgb = rgb * (1 - stem_mix) + stem * shade[..., None] * stem_mix
    if rng.uniform() < 0.5:  # a ripe banana has brown speckles
        rgb = _speckle(rng, rgb, sd, g["w0"])
    return rgb, np.clip(0.5 - sd, 0, 1)


def _speckle(rng: np.random.Generator, rgb: np.ndarray, sd: np.ndarray, w0: float) -> np.ndarray:
    """Darken a few soft round spots well inside the body."""
    ys, xs = np.nonzero(sd < -0.3 * w0)
    yy, xx = np.mgrid[0:sd.shape[0], 0:sd.shape[1]]
    spots = np.zeros(sd.shape, np.float32)
    for i in rng.integers(0, len(ys), int(rng.integers(3, 15))):
        rad = w0 * rng.uniform(0.05, 0.14)
        spots = np.maximum(spots, np.exp(-((yy - ys[i]) ** 2 + (xx - xs[i]) ** 2) / (rad**2 + 0.5)))
    return rgb * (1 - 0.55 * spots[..., None])


def _paste(img: np.ndarray, rgb: np.ndarray, alpha: np.ndarray, ox: int, oy: int) -> None:
    """Alpha-blend a canvas into img in place, its top-left corner at (ox, oy); clipped to img."""
    h, w = img.shape[:2]
    x0, y0 = max(ox, 0), max(oy, 0)
    x1, y1 = min(ox + alpha.shape[1], w), min(oy + alpha.shape[0], h)
    a = alpha[y0 - oy:y1 - oy, x0 - ox:x1 - ox, None]
    img[y0:y1, x0:x1] = img[y0:y1, x0:x1] * (1 - a) + rgb[y0 - oy:y1 - oy, x0 - ox:x1 - ox] * a


def _banana_image(rng: np.random.Generator, size: int) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """One banana over a cluttered background; returns the image and its tight box (pixels)."""
    img = _background(rng, size)
    pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    kinds = ("blob", "arc", "rect", "polygon", "line", "zigzag", "cross", "star")
    _draw_clutter(ImageDraw.Draw(pil), rng, size, int(rng.integers(3, 16)), kinds, p_yellow=0.3)
    img = np.asarray(pil, np.float32).copy()
    rgb, alpha = _banana_layer(rng, size * rng.uniform(0.17, 0.62))
    x1, y1, x2, y2 = _mask_box(alpha)
    ox = int(rng.integers(-x1, size - x2 + 1))
    oy = int(rng.integers(-y1, size - y2 + 1))
    # A soft shadow grounds the banana in the scene; it is not part of the box.
    shadow = np.asarray(Image.fromarray((alpha * 255).astype(np.uint8)).filter(
        ImageFilter.GaussianBlur(max(2, size / 80))), np.float32) / 255
    shift = int(rng.integers(1, max(2, size // 60) + 1))
    _paste(img, np.zeros_like(rgb), shadow * rng.uniform(0.2, 0.45), ox + shift, oy + shift)
    _paste(img, rgb, alpha, ox, oy)
    return _finish(img, rng), (x1 + ox, y1 + oy, x2 + ox, y2 + oy)


# ---------------------------------------------------------------------------
# Shapes: several labelled objects per image, many of them small
# ---------------------------------------------------------------------------

def _shape_outline(cls: int, cx: float, cy: float, r: float, rot: float) -> list[tuple[float, float]]:
    """Polygon of a shape with circumradius r: 64-gon circle, triangle or square."""
    corners = {0: 64, 1: 3, 2: 4}[cls]
    t = rot + np.arange(corners) * 2 * np.pi / corners
    return list(zip(cx + r * np.cos(t), cy + r * np.sin(t)))


def _overlaps(box: tuple[float, ...], boxes: list[tuple[float, ...]], limit: float = 0.15) -> bool:
    """True if box covers more than `limit` of itself or of any earlier box."""
    area = (box[2] - box[0]) * (box[3] - box[1])
    for b in boxes:
        iw = min(box[2], b[2]) - max(box[0], b[0])
        ih = min(box[3], b[3]) - max(box[1], b[1])
        if iw > 0 and ih > 0 and iw * ih > limit * min(area, (b[2] - b[0]) * (b[3] - b[1])):
            return True
    return False


def _contrasting_color(rng: np.random.Generator, backdrop: np.ndarray) -> tuple[int, int, int]:
    """The most distinct of a few random saturated colours from the mean backdrop colour."""
    mean = backdrop.reshape(-1, 3).mean(0)
    options = [_hsv(rng.uniform(), rng.uniform(0.4, 1.0), rng.uniform(0.3, 1.0)) for _ in range(6)]
    return max(options, key=lambda c: float(np.sum((np.array(c) - mean) ** 2)))


def _shapes_image(rng: np.random.Generator, size: int) -> tuple[Image.Image, list[tuple[int, ...]]]:
    """1 to 8 labelled shapes over clutter, drawn at 2x and downsampled for smooth edges.
    Returns the image and (class, x1, y1, x2, y2) tight pixel boxes."""
    backdrop = np.clip(_background(rng, size), 0, 255).astype(np.uint8)
    big = Image.fromarray(backdrop).resize((2 * size, 2 * size), Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(big)
    kinds = ("line", "zigzag", "cross", "star", "arc")  # none of them a labelled class
    _draw_clutter(draw, rng, 2 * size, int(rng.integers(2, 12)), kinds, p_yellow=0.1)
    placed, objects = [], []
    for _ in range(int(rng.integers(1, 9))):
        for _attempt in range(20):
            # Log-uniform sides: at 256 px about half the objects are COCO "small" (< 32x32 px).
            side = float(np.exp(rng.uniform(np.log(9), np.log(220)))) * size / 256
            cx, cy = rng.uniform(side / 2, size - side / 2, 2)
            box = (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)
            if not _overlaps(box, placed):
                break
        else:
            continue
        placed.append(box)
        cls = int(rng.integers(len(SHAPE_CLASSES)))
        outline = _shape_outline(cls, 2 * cx, 2 * cy, side, rng.uniform(0, 2 * np.pi))
        ix = [int(v) for v in box]
        color = _contrasting_color(rng, backdrop[max(ix[1], 0):ix[3] + 1, max(ix[0], 0):ix[2] + 1])
        edge = tuple(int(c * 0.5) for c in color) if rng.uniform() < 0.5 else color
        draw.polygon(outline, fill=color, outline=edge, width=2)
        objects.append((cls, outline))
    mask = Image.new("L", big.size)
    boxes = []
    for cls, outline in objects:
        mask.paste(0, (0, 0, *mask.size))
        ImageDraw.Draw(mask).polygon(outline, fill=255)
        coverage = np.asarray(mask.resize((size, size), Image.Resampling.BOX), np.float32) / 255
        boxes.append((cls, *_mask_box(coverage)))
    img = np.asarray(big.resize((size, size), Image.Resampling.BOX), np.float32)
    return _finish(img, rng), boxes


# ---------------------------------------------------------------------------
# Writing generated data sets
# ---------------------------------------------------------------------------

PARALLEL_MIN_IMAGES = 200  # below this, starting worker processes costs more than it saves


def _render_one(job) -> tuple:
    """Draw image ``index`` of a generated set from its own seed and save it; returns its boxes."""
    kind, seed, split, index, size, path = job
    draw = _banana_image if kind == "bananas" else _shapes_image
    image, boxes = draw(_image_rng(seed, split, index), size)
    image.save(path)
    return boxes


def _render(jobs: list[tuple], description: str, progress: bool) -> list:
    """_render_one over the jobs, in order, on all cores: every image has its own seed, so the files are
    the same whichever process draws them (1000 bananas: 26 s on one core)."""
    workers = min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    if len(jobs) < PARALLEL_MIN_IMAGES or workers < 2:
        return [_render_one(job) for job in track(jobs, description=description, disable=not progress)]
    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method)) as pool:
        results = pool.map(_render_one, jobs, chunksize=16)
        return list(track(results, total=len(jobs), description=description, disable=not progress))


def generate_bananas(root: Path, n_train: int = 1000, n_val: int = 100, size: int = 256, seed: int = 0,
                     progress: bool = True, n_test: int = 0) -> Path:
    """Write a synthetic banana folder in the chapter's layout under root; returns root.

    One banana per image (label 0), ``{i}.png`` named like the chapter's, box = the tight
    bounding box of the drawn banana pixels with xmax, ymax as exclusive pixel edges.
    Deterministic: the same arguments give byte-identical files. With ``n_test``, a third split
    ``bananas_test/`` that no search sees (each split's images come from streams of their own).
    """
    root = Path(root)
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        if not n and split == "test":
            continue
        folder = root / f"bananas_{split}"
        (folder / "images").mkdir(parents=True, exist_ok=True)
        rows = [",".join(BANANA_COLUMNS)]
        jobs = [("bananas", seed, split, i, size, folder / "images" / f"{i}.png") for i in range(n)]
        for i, (x1, y1, x2, y2) in enumerate(_render(jobs, f"bananas {split}", progress)):
            rows.append(f"{i}.png,0,{x1},{y1},{x2},{y2}")
        (folder / "label.csv").write_text("\n".join(rows) + "\n")
    return root


def generate_shapes(root: Path, n_train: int = 1000, n_val: int = 200, size: int = 256, seed: int = 0,
                    progress: bool = True, n_test: int = 0) -> Path:
    """Write a synthetic COCO folder under root (``train.json``, ``val.json``, ``train/``, ``val/``).

    Classes circle, triangle, square (category ids 1, 2, 3); 1 to 8 objects per image with
    sides from 9 to 220 px (for size 256; they scale with size), so about half are COCO "small" (area < 32^2) and some "large"
    (> 96^2); unlabelled lines, crosses, stars and arcs as distractors. Boxes are tight,
    from the drawn pixels. Deterministic: the same arguments give byte-identical files. With ``n_test``,
    a third split (``test.json``, ``test/``) that no search sees.
    """
    root = Path(root)
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(SHAPE_CLASSES)]
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        if not n and split == "test":
            continue
        (root / split).mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        jobs = [("shapes", seed, split, i, size, root / f"{split}/{i:06d}.png") for i in range(n)]
        for i, boxes in enumerate(_render(jobs, f"shapes {split}", progress)):
            name = f"{split}/{i:06d}.png"
            images.append({"id": i + 1, "file_name": name, "height": size, "width": size})
            for cls, x1, y1, x2, y2 in boxes:
                annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": cls + 1,
                                    "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                                    "iscrowd": 0})
        coco = {"images": images, "annotations": annotations, "categories": categories}
        (root / f"{split}.json").write_text(json.dumps(coco, indent=1))
    return root
