"""Pictures of a probe job: valid, non-trivial PNGs for grayscale, RGB and unlabeled seeds."""

import sys

import numpy as np
import pytest
import torch
from PIL import Image

from rai_probe.probing.figures import (
    CurvePanel,
    heatmap,
    plot_batch_grid,
    plot_class_grid,
    plot_curves,
    plot_heatmap_gallery,
    plot_loss_trace,
    save_batch_grids,
    signed_heatmap,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _pixels(path):
    """The PNG as an (H, W, 3) uint8 array, after checking its signature and that it is not one colour."""
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as image:
        array = np.asarray(image.convert("RGB"))
    assert len(np.unique(array.reshape(-1, 3), axis=0)) > 10, "a blank picture"
    return array


def _reddish(array):
    """Pixels of a saturated red (the low end of the 'hot' heatmap colours), not gray or text."""
    r, g, b = (array[..., k].astype(int) for k in range(3))
    return int(((r > 180) & (g < 90) & (b < 90)).sum())


def _batch(channels, n=3, *, size=12, seed=0):
    gen = torch.Generator().manual_seed(seed)
    images = torch.rand(n, channels, size, size, generator=gen) * 0.5
    delta = torch.zeros_like(images)
    delta[:, :, 2:5, 3:6] = 0.2  # 40 % of the maximum: a red 'hot' colour
    delta[:, :, 8, 8] = 0.5  # the maximum: white
    return images, images + delta


def _grid(path, images, xadv, *, labels, targets=None, max_images=8):
    n = images.shape[0]
    return plot_batch_grid(
        path, images, xadv, labels=labels, clean_pred=torch.arange(n) % 10,
        clean_conf=torch.full((n,), 0.9), adv_pred=(torch.arange(n) + 1) % 10,
        adv_conf=torch.full((n,), 0.6), class_names=[f"class{k}" for k in range(10)],
        targets=targets, max_images=max_images)


def test_heatmaps_exact():
    delta = torch.tensor([[[[1.0, -2.0]], [[-0.5, 0.0]], [[0.25, 0.25]]]])
    assert heatmap(delta).tolist() == [[[1.75, 2.25]]]
    assert signed_heatmap(delta[:, :1]).tolist() == [[[1.0, -2.0]]]
    with pytest.raises(ValueError, match="grayscale"):
        signed_heatmap(delta)
    with pytest.raises(ValueError, match="N, C, H, W"):
        heatmap(torch.zeros(3, 4))


def test_grayscale_grid_has_a_signed_row_and_heat(tmp_path):
    images, xadv = _batch(1)
    array = _pixels(_grid(tmp_path / "gray.png", images, xadv, labels=torch.tensor([0, 1, 2])))
    assert _reddish(array) > 50
    rgb = _pixels(_grid(tmp_path / "rgb.png", *_batch(3), labels=torch.tensor([0, 1, 2])))
    assert array.shape[0] > rgb.shape[0]  # four rows against three


COLOR_BAR_PX = 80  # the colour bars sit in the right margin (0.75 in at 100 dpi)


@pytest.mark.parametrize("change", [0.0, 1e-7, 1e-4])
def test_zero_and_near_zero_perturbations_draw_no_saturated_heat(tmp_path, change):
    """A near-zero change is drawn faint (the colour limit is at least one gray level), never saturated."""
    images, _ = _batch(3)
    xadv = images + change
    array = _pixels(_grid(tmp_path / "zero.png", images, xadv, labels=torch.tensor([0, 1, 2])))
    assert _reddish(array[:, :-COLOR_BAR_PX]) == 0


def test_heatmaps_share_one_scale_with_a_color_bar(tmp_path):
    from rai_probe.probing.figures import MIN_COLOR_LIMIT, color_limit

    assert color_limit(np.array([0.0, -0.3, 0.2])) == 0.3 and color_limit(np.zeros(3)) == MIN_COLOR_LIMIT
    images, xadv = _batch(1, n=2)
    xadv[1] = images[1] + (xadv[1] - images[1]) * 0.02  # a 50x smaller change in the second column
    array = _pixels(_grid(tmp_path / "shared.png", images, xadv, labels=torch.tensor([0, 1])))
    width = array.shape[1] - COLOR_BAR_PX
    left, right = array[:, : width // 2], array[:, width // 2 : width]
    assert _reddish(left) > 10 and _reddish(right) == 0  # on one scale the small change is faint
    assert _reddish(array[:, -COLOR_BAR_PX:]) > 10  # the colour bar shows the scale


def test_batch_grid_marks_which_images_flipped(tmp_path):
    images, xadv = _batch(1, n=2)
    n = 2
    path = plot_batch_grid(
        tmp_path / "marked.png", images, xadv, labels=torch.tensor([0, 1]), clean_pred=torch.tensor([0, 1]),
        clean_conf=torch.full((n,), 0.9), adv_pred=torch.tensor([5, 1]), adv_conf=torch.full((n,), 0.6),
        class_names=None, success=torch.tensor([True, False]))
    array = _pixels(path)
    r, g, b = (array[..., k].astype(int) for k in range(3))
    green = int(((g > 100) & (r < 90) & (b < 90)).sum())
    assert green > 50  # the flipped image's frame
    assert _reddish(array[:, : (array.shape[1] - COLOR_BAR_PX) // 2]) < _reddish(array[:, :-COLOR_BAR_PX])


def test_rgb_seeds_without_labels_and_with_targets(tmp_path):
    images, xadv = _batch(3, n=2)
    path = _grid(tmp_path / "seeds.png", images, xadv, labels=None, targets=torch.tensor([4, 7]))
    assert _reddish(_pixels(path)) > 50
    path = _grid(tmp_path / "unknown.png", images, xadv, labels=torch.tensor([-1, 3]))
    _pixels(path)


def test_grid_caps_columns_and_rejects_bad_channels(tmp_path):
    images, xadv = _batch(3, n=4)
    wide = _pixels(_grid(tmp_path / "wide.png", images, xadv, labels=torch.arange(4)))
    narrow = _pixels(_grid(tmp_path / "narrow.png", images, xadv, labels=torch.arange(4), max_images=1))
    assert wide.shape[1] > 2 * narrow.shape[1]
    four = torch.rand(1, 4, 5, 5)
    with pytest.raises(ValueError, match="1 .grayscale. or 3"):
        _grid(tmp_path / "bad.png", four, four, labels=torch.tensor([0]))
    with pytest.raises(ValueError, match="labels"):
        _grid(tmp_path / "bad.png", images, xadv, labels=torch.tensor([0]))


def test_save_batch_grids_one_file_per_batch_capped(tmp_path):
    images, xadv = _batch(3, n=5)
    n = images.shape[0]
    kwargs = dict(labels=torch.arange(n), clean_pred=torch.arange(n), clean_conf=torch.ones(n),
                  adv_pred=torch.zeros(n, dtype=torch.long), adv_conf=torch.ones(n), class_names=None,
                  max_images=1)
    paths = save_batch_grids(tmp_path, images, xadv, batch_size=2, **kwargs)
    assert [p.name for p in paths] == ["batch_000.png", "batch_001.png", "batch_002.png"]
    assert all(p.parent == tmp_path / "figures" for p in paths)
    for path in paths:
        _pixels(path)
    capped = save_batch_grids(tmp_path / "capped", images, xadv, batch_size=1, max_grids=2, **kwargs)
    assert len(capped) == 2 and len(list((tmp_path / "capped" / "figures").iterdir())) == 2


def test_loss_trace(tmp_path):
    trace = torch.linspace(2.0, 0.1, 30)
    _pixels(plot_loss_trace(tmp_path / "loss.png", trace, datum_loss_trace=torch.rand(30, 5)))
    restarts = torch.stack([trace, trace.flip(0)])
    restarts[1, 20:] = float("nan")
    _pixels(plot_loss_trace(tmp_path / "restarts.png", restarts))
    with pytest.raises(ValueError, match="loss_trace"):
        plot_loss_trace(tmp_path / "empty.png", torch.empty(0))


def test_class_grid_marks_failures(tmp_path):
    gen = torch.Generator().manual_seed(1)
    xadv = torch.rand(6, 1, 10, 10, generator=gen) * 0.5
    sources = torch.tensor([0, 0, 0, 1, 1, 1])
    targets = torch.tensor([3, 1, 2, 1, 2, 3])
    names = [f"c{k}" for k in range(4)]
    ok = plot_class_grid(tmp_path / "ok.png", xadv, sources=sources, targets=targets, class_names=names,
                         success=torch.ones(6, dtype=torch.bool))
    assert _reddish(_pixels(ok)) == 0
    failed = plot_class_grid(tmp_path / "failed.png", xadv, sources=sources, targets=targets,
                             class_names=names, success=torch.tensor([1, 1, 0, 1, 1, 1]).bool(),
                             deltas=xadv - 0.25)
    array = _pixels(failed)
    assert _reddish(array) > 100  # the red frame(s)
    assert array.shape[0] > _pixels(ok).shape[0]  # a heatmap row per source
    with pytest.raises(ValueError, match="pair"):
        plot_class_grid(tmp_path / "dup.png", xadv[:2], sources=torch.tensor([0, 0]),
                        targets=torch.tensor([1, 1]), class_names=names)


def test_single_target_class_grid_is_a_grid_not_a_column(tmp_path):
    xadv = torch.rand(16, 1, 10, 10, generator=torch.Generator().manual_seed(2)) * 0.5
    path = plot_class_grid(tmp_path / "one.png", xadv, sources=torch.arange(16), targets=torch.full((16,), 3),
                           class_names=[str(k) for k in range(10)], deltas=xadv - 0.25)
    height, width, _ = _pixels(path).shape
    assert height < 2 * width  # 8 columns x 2 blocks, not 32 rows of one column
    tall = plot_class_grid(tmp_path / "two.png", xadv[:4], sources=torch.tensor([0, 0, 1, 1]),
                           targets=torch.tensor([2, 3, 2, 3]), class_names=[str(k) for k in range(10)])
    assert _pixels(tall).shape[0] > 0


def test_sweep_pictures(tmp_path):
    panel = CurvePanel("success", {"q=0.9": ([1.0, 10.0, 100.0], [0.1, 0.5, None])}, ylim=(0, 1))
    _pixels(plot_curves(tmp_path / "curves.png", [panel, panel], xlabel="epsilon"))
    maps = [torch.rand(6, 6), None, torch.zeros(6, 6)]
    _pixels(plot_heatmap_gallery(tmp_path / "gallery.png", maps, ["a", "none", "zero"], ncols=2,
                                 failed=[False, False, True]))
    _pixels(plot_heatmap_gallery(tmp_path / "own.png", maps, ["a", "none", "zero"], shared_scale=False))
    with pytest.raises(ValueError, match="same length"):
        plot_heatmap_gallery(tmp_path / "g.png", maps, ["a"])


def test_no_pyplot_figures_left_open(tmp_path):
    images, xadv = _batch(1, n=1)
    _grid(tmp_path / "one.png", images, xadv, labels=torch.tensor([0]))
    if "matplotlib.pyplot" in sys.modules:  # imported by something else in the session
        assert sys.modules["matplotlib.pyplot"].get_fignums() == []
