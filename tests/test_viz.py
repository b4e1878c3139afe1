"""Tests for minivlm.viz: figures have the expected panels, rollout maths, masks, the τ slider."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure

from minivlm import viz


@pytest.fixture
def image() -> np.ndarray:
    g = np.random.default_rng(0)
    return g.integers(0, 256, size=(32, 48, 3), dtype=np.uint8)


def _n_images(fig: Figure) -> int:
    return sum(len(ax.images) for ax in fig.axes)


# --------------------------------------------------------------------------- heatmap


def test_similarity_heatmap_labels_and_annotations():
    sim = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.8, 0.3]])
    fig = viz.similarity_heatmap(
        sim, row_labels=["img a", "img b"], col_labels=["a cat", "a dog", "a car"], title="cos"
    )
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert len(fig.axes) == 2  # heatmap + colorbar
    np.testing.assert_allclose(ax.images[0].get_array(), sim.numpy())
    assert [t.get_text() for t in ax.get_yticklabels()] == ["img a", "img b"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a cat", "a dog", "a car"]
    assert sorted(t.get_text() for t in ax.texts) == sorted(
        format(v, ".2f") for v in sim.flatten().tolist()
    )
    assert ax.get_title() == "cos"
    fig = viz.similarity_heatmap(np.eye(3), annotate=False, colorbar=False)
    assert len(fig.axes) == 1 and not fig.axes[0].texts


def test_similarity_heatmap_rejects_bad_input():
    with pytest.raises(ValueError, match="2-D"):
        viz.similarity_heatmap(torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match="row_labels"):
        viz.similarity_heatmap(torch.zeros(2, 3), row_labels=["a"])
    with pytest.raises(ValueError, match="col_labels"):
        viz.similarity_heatmap(torch.zeros(2, 3), col_labels=["a"])


# --------------------------------------------------------------------------- masks


def test_mask_plot_colours_true_cells():
    mask = torch.tensor([[True, False, False], [True, True, False], [False, True, True]])
    fig = viz.mask_plot(
        mask,
        labels=["q0", "t0", "t1"],
        title="causal-ish",
        true_color="#ff0000",
        false_color="#ffffff",
    )
    assert len(fig.axes) == 1
    im = fig.axes[0].images[0]
    rgba = im.to_rgba(im.get_array())  # (3, 3, 4) floats
    red, white = np.array(to_rgba("#ff0000")), np.array(to_rgba("#ffffff"))
    for i in range(3):
        for j in range(3):
            expected = red if mask[i, j] else white
            np.testing.assert_allclose(rgba[i, j], expected, atol=1e-6, err_msg=f"cell {i},{j}")
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["q0", "t0", "t1"]


def test_mask_plot_dict_one_panel_each():
    q, t = 2, 3
    T = q + t
    itc = torch.zeros(T, T, dtype=torch.bool)
    itc[:q, :q] = True
    itc[q:, q:] = True
    masks = {
        "ITC": itc,
        "ITM": torch.ones(T, T, dtype=torch.bool),
        "ITG": torch.tril(torch.ones(T, T)).bool(),
    }
    fig = viz.mask_plot(masks, labels=[f"q{i}" for i in range(q)] + [f"t{i}" for i in range(t)])
    assert len(fig.axes) == 3
    assert [ax.get_title() for ax in fig.axes] == ["ITC", "ITM", "ITG"]
    for ax, m in zip(fig.axes, masks.values()):
        np.testing.assert_array_equal(np.asarray(ax.images[0].get_array()), m.numpy().astype(int))


def test_mask_plot_rejects_bad_input():
    with pytest.raises(ValueError, match="boolean"):
        viz.mask_plot(torch.rand(3, 3) + 0.5)
    with pytest.raises(ValueError, match="labels"):
        viz.mask_plot(torch.ones(3, 3, dtype=torch.bool), labels=["a", "b"])
    with pytest.raises(ValueError, match="2-D"):
        viz.mask_plot(torch.ones(3, dtype=torch.bool))


# --------------------------------------------------------------------------- rollout


def test_rollout_identity_attention_gives_identity():
    T = 5
    eye = torch.eye(T).expand(2, 3, T, T)  # (B, H, T, T)
    r = viz.attention_rollout([eye, eye, eye])
    assert r.shape == (2, T, T)
    torch.testing.assert_close(r, torch.eye(T).expand(2, T, T))


def test_rollout_two_layers_matches_numpy():
    g = torch.Generator().manual_seed(0)
    B, H, T = 2, 3, 4
    layers = [torch.rand(B, H, T, T, generator=g).softmax(-1) for _ in range(2)]

    def manual(a: np.ndarray) -> np.ndarray:  # a: (B, H, T, T)
        m = a.mean(axis=1)
        m = 0.5 * m + 0.5 * np.eye(T)
        return m / m.sum(-1, keepdims=True)

    a1, a2 = (manual(x.numpy().astype(np.float64)) for x in layers)
    expected = np.einsum("bij,bjk->bik", a2, a1)  # later layer on the left
    r = viz.attention_rollout(layers)
    np.testing.assert_allclose(r.numpy(), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(r.sum(-1).numpy(), 1.0, atol=1e-5)
    # order matters: the reversed product differs
    assert not np.allclose(np.einsum("bij,bjk->bik", a1, a2), expected, atol=1e-4)
    # stacked input (L, B, H, T, T) gives the same
    torch.testing.assert_close(viz.attention_rollout(torch.stack(layers)), r)


def test_rollout_hand_computed_and_fusions():
    # One layer, one head, no residual: rollout is the attention itself.
    a = torch.tensor([[[[0.5, 0.5], [0.0, 1.0]]]])
    torch.testing.assert_close(viz.attention_rollout([a], add_residual=False), a[:, 0])
    # With the residual: 0.5*A + 0.5*I = [[0.75, 0.25], [0, 1]]
    torch.testing.assert_close(
        viz.attention_rollout([a]), torch.tensor([[[0.75, 0.25], [0.0, 1.0]]])
    )
    # max fusion over two heads, rows renormalised
    two = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [1.0, 0.0]]]])
    torch.testing.assert_close(
        viz.attention_rollout([two], head_fusion="max", add_residual=False),
        torch.full((1, 2, 2), 0.5),
    )
    with pytest.raises(ValueError, match="head_fusion"):
        viz.attention_rollout([two], head_fusion="median")
    with pytest.raises(ValueError, match="differs"):
        viz.attention_rollout([two, torch.ones(1, 2, 3, 3)])
    with pytest.raises(ValueError, match="at least one"):
        viz.attention_rollout([])


def test_cls_attention_map():
    T = 1 + 6
    r = torch.arange(T * T, dtype=torch.float32).reshape(1, T, T)
    m = viz.cls_attention_map(r, (2, 3))
    assert m.shape == (1, 2, 3)
    torch.testing.assert_close(m[0], torch.tensor([[1.0, 2, 3], [4, 5, 6]]))
    assert viz.cls_attention_map(r[0], (2, 3)).shape == (2, 3)
    with pytest.raises(ValueError, match="patches"):
        viz.cls_attention_map(r, (3, 3))


# --------------------------------------------------------------------------- image figures


def test_attention_overlay_bilinear_and_shapes(image):
    attn = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    fig = viz.attention_overlay(image, attn, alpha=0.4)
    ax = fig.axes[0]
    assert _n_images(fig) == 2
    heat = np.asarray(ax.images[1].get_array())
    assert heat.shape == image.shape[:2]
    assert ax.images[1].get_alpha() == pytest.approx(0.4)
    # bilinear: smooth ramp from left (0) to right (1), constant down the columns
    assert heat[:, 0].max() < 0.05 and heat[:, -1].min() > 0.95
    assert np.all(np.diff(heat[0]) >= -1e-9) and 0.3 < heat[0, 24] < 0.7
    # (N,) input, CHW float image and an explicit ax
    fig2 = viz.attention_overlay(torch.rand(3, 32, 48), torch.rand(16))
    assert _n_images(fig2) == 2
    with pytest.raises(ValueError, match="square"):
        viz.attention_overlay(image, torch.rand(7))
    with pytest.raises(ValueError, match="image"):
        viz.attention_overlay(torch.rand(5, 32, 48), torch.rand(4))


def test_head_grid_and_token_grid(image):
    fig = viz.head_grid(image, torch.rand(6, 12), (3, 4), ncols=4)
    assert len(fig.axes) == 6 and _n_images(fig) == 12
    assert fig.axes[5].get_title() == "head 5"
    with pytest.raises(ValueError, match="num_heads"):
        viz.head_grid(image, torch.rand(6, 11), (3, 4))

    tokens = ["a", "red", "circle"]
    fig = viz.token_to_patch_grid(image, torch.rand(3, 12), tokens, (3, 4))
    assert len(fig.axes) == 3 and fig.axes[1].get_title() == "'red'"
    fig = viz.token_to_patch_grid(image, torch.rand(3, 12), tokens, (3, 4), select=["circle"])
    assert len(fig.axes) == 1 and fig.axes[0].get_title() == "'circle'"
    with pytest.raises(ValueError, match="tokens"):
        viz.token_to_patch_grid(image, torch.rand(3, 12), ["a"], (3, 4))


def test_patch_grid_gaps(image):
    fig = viz.patch_grid(image, 16, gap=2)
    canvas = np.asarray(fig.axes[0].images[0].get_array())
    assert canvas.shape == (2 * 16 + 2, 3 * 16 + 2 * 2, 3)
    np.testing.assert_allclose(canvas[16:18], 1.0)  # white gap row
    np.testing.assert_allclose(canvas[18:34, 18:34], image[16:32, 16:32] / 255.0)
    assert fig.axes[0].get_title() == "2x3 = 6 patches of 16x16"
    with pytest.raises(ValueError, match="divisible"):
        viz.patch_grid(image, 10)
    assert viz.patch_grid(image, 10, crop=True).axes[0].get_title().startswith("3x4")


def test_image_grid(image):
    imgs = torch.randn(10, 3, 8, 8)
    fig = viz.image_grid(imgs, titles=[str(i) for i in range(10)], ncols=4)
    assert len(fig.axes) == 10 and _n_images(fig) == 10
    assert fig.axes[9].get_title() == "9"
    shown = np.asarray(fig.axes[0].images[0].get_array())
    assert shown.min() >= 0 and shown.max() <= 1
    fig = viz.image_grid(np.stack([image, image]))
    np.testing.assert_allclose(fig.axes[1].images[0].get_array(), image / 255.0)
    # mean/std are undone before display
    x = torch.full((1, 3, 4, 4), 0.0)
    fig = viz.image_grid(x, mean=[0.5, 0.5, 0.5], std=[0.2, 0.2, 0.2])
    np.testing.assert_allclose(fig.axes[0].images[0].get_array(), 0.5)
    with pytest.raises(ValueError, match="titles"):
        viz.image_grid(imgs, titles=["x"])


def test_loss_curves_and_bar_compare():
    fig = viz.loss_curves({"itc": [3.0, 2.0, 1.5, 1.0], "itm": torch.tensor([0.7, 0.6, 0.5, 0.4])})
    ax = fig.axes[0]
    assert len(ax.lines) == 2
    np.testing.assert_allclose(ax.lines[1].get_ydata(), [0.7, 0.6, 0.5, 0.4], rtol=1e-6)
    fig = viz.loss_curves({"a": list(range(10))}, smooth=5)
    assert len(fig.axes[0].lines) == 2  # raw + smoothed
    np.testing.assert_allclose(fig.axes[0].lines[1].get_ydata(), np.arange(2, 8))

    fig = viz.bar_compare({"CLIP": 0.3, "ALBEF": 0.5})
    assert [p.get_height() for p in fig.axes[0].patches] == pytest.approx([0.3, 0.5])
    fig = viz.bar_compare({"R@1": {"a": 0.1, "b": 0.2}, "R@5": {"a": 0.3, "b": 0.4}})
    assert sorted(p.get_height() for p in fig.axes[0].patches) == pytest.approx(
        [0.1, 0.2, 0.3, 0.4]
    )
    with pytest.raises(ValueError, match="mix"):
        viz.bar_compare({"a": 1.0, "b": {"x": 1.0}})


# --------------------------------------------------------------------------- widget


def test_softmax_with_temperature():
    p = viz.softmax_with_temperature(torch.tensor([1.0, 2.0, 3.0]), 1.0)
    np.testing.assert_allclose(
        p, torch.softmax(torch.tensor([1.0, 2.0, 3.0]), 0).numpy(), rtol=1e-6
    )
    p = viz.softmax_with_temperature([1000.0, 0.0], 0.001)  # no overflow
    np.testing.assert_allclose(p, [1.0, 0.0])
    with pytest.raises(ValueError, match="tau"):
        viz.softmax_with_temperature([1.0], 0.0)


def test_temperature_slider_updates_probs():
    import ipywidgets as widgets

    logits = torch.tensor([2.0, 1.0, 0.5, -1.0])
    w = viz.temperature_slider(logits, ["cat", "dog", "car", "sky"], value=1.0)
    assert isinstance(w, widgets.VBox)
    np.testing.assert_allclose(w.probs, torch.softmax(logits, 0).numpy(), rtol=1e-6)
    png_before = w.image.value
    assert png_before[:8] == b"\x89PNG\r\n\x1a\n"

    w.slider.value = 0.01  # sharp: almost one-hot
    assert w.tau == pytest.approx(0.01, rel=1e-6)
    assert w.probs.sum() == pytest.approx(1.0)
    assert w.probs[0] > 0.999
    assert w.image.value != png_before
    heights = [p.get_height() for p in w.figure.axes[0].patches]
    np.testing.assert_allclose(heights, w.probs)

    w.slider.value = 2.0  # flat: entropy grows
    np.testing.assert_allclose(w.probs, torch.softmax(logits / 2.0, 0).numpy(), rtol=1e-6)
    assert w.probs.sum() == pytest.approx(1.0)
    assert w.probs.max() < 0.6

    with pytest.raises(ValueError, match="labels"):
        viz.temperature_slider(logits, ["a"])
    with pytest.raises(ValueError, match="taus"):
        viz.temperature_slider(logits, list("abcd"), taus=(1.0, 0.1))


def test_figures_render_as_png_without_pyplot():
    fig = viz.similarity_heatmap(np.eye(2))
    assert isinstance(fig, viz.VizFigure)
    data, meta = fig._repr_png_()  # what Jupyter shows when the figure is a cell's value
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    w, h = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert meta == {"width": w // 2, "height": h // 2}  # 2x pixels, shown at logical size
    assert fig.canvas.manager is None  # not registered with pyplot: no leaks, no double display


def test_heatmap_annotation_contrast():
    # light cells get black text, dark cells white text, whatever the colormap's direction
    for cmap in ("viridis", "Blues"):
        fig = viz.similarity_heatmap(np.array([[0.0, 1.0]]), cmap=cmap, colorbar=False)
        colors = [t.get_color() for t in fig.axes[0].texts]
        dark_first = cmap == "viridis"  # viridis: low = dark purple; Blues: low = white
        assert colors == (["white", "black"] if dark_first else ["black", "white"])


# --------------------------------------------------------------------------- patch_map


def test_patch_map_one_cell_per_patch_with_colourbar_and_image(image):
    vals = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    fig = viz.patch_map(vals, image=image, title="attention", label="weight")
    img_ax, map_ax = fig.axes[0], fig.axes[1]
    assert len(fig.axes) == 3  # image, map, colourbar
    im = map_ax.images[0]
    assert im.get_interpolation() == "nearest"
    np.testing.assert_array_equal(np.asarray(im.get_array()), vals.numpy())
    assert fig.axes[2].get_ylabel() == "weight"
    assert len(img_ax.images) == 1
    # patch boundaries drawn on the picture: 2 horizontal + 3 vertical lines
    assert len(img_ax.lines) == 2 + 3
    assert map_ax.get_title() == "attention"


def test_patch_map_flat_values_square_or_grid_hw():
    fig = viz.patch_map(np.linspace(0, 1, 16))
    assert np.asarray(fig.axes[0].images[0].get_array()).shape == (4, 4)
    assert len(fig.axes) == 2  # map + colourbar, no image panel
    fig = viz.patch_map(np.arange(6.0), grid_hw=(2, 3), annotate=True)
    assert np.asarray(fig.axes[0].images[0].get_array()).shape == (2, 3)
    assert [t.get_text() for t in fig.axes[0].texts][:2] == ["0.00", "1.00"]
    with pytest.raises(ValueError, match="not a square number"):
        viz.patch_map(np.arange(6.0))
    with pytest.raises(ValueError, match=r"expected \(h, w\) or \(N,\)"):
        viz.patch_map(np.zeros((2, 2, 2)))


def test_patch_map_into_given_axes(image):
    from minivlm.viz import _new_figure

    fig = _new_figure((6, 3))
    a, b = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    assert viz.patch_map(np.ones(4), ax=b) is fig
    assert len(b.images) == 1 and len(a.images) == 0
    assert viz.patch_map(np.ones(4), image=image, ax=(a, b)) is fig
    assert len(a.images) == 1
    with pytest.raises(ValueError, match="two Axes"):
        viz.patch_map(np.ones(4), image=image, ax=b)
