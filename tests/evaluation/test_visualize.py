"""pipeline.evaluation.visualize: drawn boxes land where they should, and PNGs are written."""

import numpy as np
import torch
from PIL import Image

from pipeline import data as D
from pipeline.evaluation.visualize import draw_detections, preview, save_grid


def test_draw_detections_draws_box_edges_only():
    image = torch.zeros((3, 64, 80), dtype=torch.uint8)
    out = draw_detections(image, torch.tensor([[10.0, 20.0, 50.0, 40.0]]), ["cat"], colors="#ff0000",
                          scores=[0.87])
    assert out.shape == image.shape and out.dtype == torch.uint8
    assert image.sum() == 0  # the input is not changed
    assert out[:, 30, 10].tolist() == [255, 0, 0]  # left edge
    assert out[:, 36, 45].tolist() == [0, 0, 0]  # inside, away from the caption, stays untouched
    assert out[:, 5, 70].tolist() == [0, 0, 0]  # far outside
    assert torch.equal(draw_detections(image, torch.zeros((0, 4)), []), image)


def test_save_grid_and_preview_write_non_blank_pngs(tmp_path):
    tiles = [torch.full((3, 16, 16), v, dtype=torch.uint8) for v in (0, 100, 200)]
    grid = np.asarray(Image.open(save_grid(tiles, tmp_path / "grid.png", ncol=2)))
    assert grid.shape == (2 * 16 + 3 * 2, 2 * 16 + 3 * 2, 3)  # 2x2 tiles with 2-px padding

    root = D.generate_shapes(tmp_path / "shapes", n_train=3, n_val=1, size=96, progress=False)
    data = D.load_split(str(root), "train", 96, progress=False)
    path = preview(data, tmp_path / "out" / "preview.png", n=4)
    assert path.is_file()
    pixels = np.asarray(Image.open(path))
    assert pixels.shape == (96 + 4, 3 * 96 + 8, 3) and pixels.std() > 10
    # Box edges are drawn in the palette's class colours.
    first_box = data.targets[0, 0]
    x1 = int(first_box[1] * 96) + 2  # + the grid's padding
    y_mid = int((first_box[2] + first_box[4]) / 2 * 96) + 2
    assert pixels[y_mid, x1].tolist() in [list(Image.new("RGB", (1, 1), c).getpixel((0, 0)))
                                          for c in ("#ff1f1f", "#1fa2ff", "#39e639")]
