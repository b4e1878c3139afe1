"""Qwen2-VL / Qwen2.5-VL parity with tiny random transformers models, and the pieces."""

from __future__ import annotations

import pytest
import torch

from minivlm.models.qwen_vl import (
    Qwen2VL,
    QwenVLAdapter,
    mrope_position_ids,
    pack_images,
    vision_positions,
    window_partition,
)

transformers = pytest.importorskip("transformers")

IMG, START, END = 90, 92, 93


def _hf(kind: str, mrope=(2, 1, 3), tie=False, vdim=32, vheads=4, window=16, fullatt=(1,)):
    text = dict(vocab_size=100, hidden_size=48, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                rope_parameters=dict(rope_type="default", rope_theta=10000.0,
                                     mrope_section=list(mrope)),
                bos_token_id=1, eos_token_id=2)
    ids = dict(image_token_id=IMG, video_token_id=91, vision_start_token_id=START,
               vision_end_token_id=END, tie_word_embeddings=tie)
    if kind == "2":
        vision = dict(depth=2, embed_dim=vdim, hidden_size=48, num_heads=vheads, patch_size=4,
                      temporal_patch_size=2, spatial_merge_size=2, mlp_ratio=2)
        cfg = transformers.Qwen2VLConfig(vision_config=vision, text_config=text, **ids)
        cls = transformers.Qwen2VLForConditionalGeneration
    else:
        vision = dict(depth=3, hidden_size=vdim, out_hidden_size=48, intermediate_size=40,
                      num_heads=vheads, patch_size=4, temporal_patch_size=2, spatial_merge_size=2,
                      window_size=window, fullatt_block_indexes=list(fullatt))
        cfg = transformers.Qwen2_5_VLConfig(vision_config=vision, text_config=text, **ids)
        cls = transformers.Qwen2_5_VLForConditionalGeneration
    torch.manual_seed(0)
    m = cls(cfg).eval()
    with torch.no_grad():  # random norms and biases so that every parameter matters
        for n, p in m.named_parameters():
            if "norm" in n or "ln_q" in n or n.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    return m


def _batch(grids, rows, T=None):
    """rows: list of lists of image indices per batch row -> input_ids, mask, grid_thw."""
    g = torch.tensor(grids)
    seqs = []
    for imgs in rows:
        s = [5, 6, 7]
        for i in imgs:
            t, h, w = grids[i]
            s += [START] + [IMG] * (t * h * w // 4) + [END, 8, 9]
        seqs.append(s)
    T = max(map(len, seqs)) + 1
    ids = torch.zeros(len(rows), T, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, s in enumerate(seqs):
        ids[b, : len(s)] = torch.tensor(s)
        mask[b, : len(s)] = 1
    return ids, mask, g


CASES = [
    # kind, grids (t, h, w) in patches, images per row, extra options
    ("2", [(1, 4, 6), (1, 2, 2)], [[0], [1]], dict()),
    ("2", [(1, 6, 2), (1, 4, 4), (1, 2, 8)], [[0, 1], [2]], dict(mrope=(4, 1, 1), tie=True)),
    ("2.5", [(1, 6, 8), (1, 4, 4)], [[0], [1]], dict()),
    ("2.5", [(1, 10, 6), (1, 2, 4), (1, 8, 8)], [[0], [1, 2]],
     dict(window=8, fullatt=(0, 2), mrope=(1, 3, 2), vheads=2)),
]


@pytest.mark.parametrize("kind,grids,rows,opts", CASES)
def test_parity_with_transformers(kind, grids, rows, opts):
    hf = _hf(kind, **opts)
    ours = Qwen2VL.from_hf(hf).eval()
    ids, mask, g = _batch(grids, rows)
    n = int(g.prod(-1).sum())
    pixels = torch.randn(n, 3 * 2 * 4 * 4)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, pixel_values=pixels, image_grid_thw=g,
                 mm_token_type_ids=(ids == IMG).long()).logits
        got = ours(ids, pixels, g, attention_mask=mask).logits
        pos_ref, _ = hf.model.get_rope_index(ids, (ids == IMG).long(), g, attention_mask=mask)
    keep = mask.bool()
    assert torch.equal(ours.position_ids(ids, g, mask)[:, keep], pos_ref[:, keep])
    assert (got[keep] - ref[keep]).abs().max() < 1e-4
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in hf.parameters())


def test_positions_and_windows_by_hand():
    # a 4x4-patch image: block-major rows/cols of the first 2x2 window, then the next window
    pos = vision_positions(torch.tensor([[1, 4, 4]]), 2)
    assert pos[:8].tolist() == [[0, 0], [0, 1], [1, 0], [1, 1], [0, 2], [0, 3], [1, 2], [1, 3]]
    # 3x5 merged grid, windows of 2: raster windows, edge windows smaller
    order, lengths = window_partition(torch.tensor([[1, 6, 10]]), 2, 2)
    assert order[:4].tolist() == [0, 1, 5, 6] and lengths == [16, 16, 8, 8, 8, 4]
    # text, a 2x3 merged image, text: the text after resumes at start + max(h, w)
    ids = torch.tensor([[5, 2] + [7] * 6 + [3, 9]])
    p = mrope_position_ids(ids, torch.tensor([[1, 4, 6]]), 7, 2)
    assert p[:, 0, :2].tolist() == [[0, 1]] * 3
    assert p[:, 0, 2:8].tolist() == [[2] * 6, [2, 2, 2, 3, 3, 3], [2, 3, 4, 2, 3, 4]]
    assert p[:, 0, 8:].tolist() == [[5, 6]] * 3
    with pytest.raises(ValueError, match="image_grid_thw has 2 images"):
        mrope_position_ids(ids, torch.tensor([[1, 4, 6], [1, 2, 2]]), 7, 2)


def test_batch_without_padding_equals_one_image_at_a_time():
    import minivlm

    model = minivlm.create_model("qwen2_5_vl_tiny").eval()
    c = model.config
    torch.manual_seed(1)
    images = [torch.rand(3, 32, 48), torch.rand(3, 64, 32)]
    px, g = pack_images(images, c.patch_size, c.merge_size)
    with torch.no_grad():
        both = model.visual(px, g)
        alone = torch.cat([model.visual(*pack_images([im], c.patch_size, c.merge_size))
                           for im in images])
    assert both.shape == (int(g.prod(-1).sum()) // 4, c.lm.dim)
    assert (both - alone).abs().max() < 1e-5


def test_adapter_token_count_is_fixed():
    ad = QwenVLAdapter(dim=32, kv_dim=24, num_queries=16, num_heads=4)
    for h, w in [(4, 4), (6, 10)]:
        assert ad(torch.randn(2, h * w, 24), (h, w)).shape == (2, 16, 32)
    with pytest.raises(ValueError, match="expected x of shape"):
        ad(torch.randn(2, 10, 24), (4, 4))


@pytest.mark.parametrize("name,count", [("qwen2_vl_2b", 2_208_985_600),
                                        ("qwen2_5_vl_3b", 3_754_622_976)])
def test_published_sizes(name, count):
    import minivlm

    with torch.device("meta"):
        model = minivlm.create_model(name)
    assert sum(p.numel() for p in model.parameters()) == count


def test_pack_images_matches_the_hf_processor_layout():
    proc = transformers.Qwen2VLImageProcessor(patch_size=4, merge_size=2, temporal_patch_size=2,
                                              do_resize=False, do_rescale=False,
                                              do_normalize=False)
    torch.manual_seed(0)
    ims = [torch.rand(3, 16, 24), torch.rand(3, 32, 16)]
    ref = proc([im.numpy() for im in ims], return_tensors="pt",
               input_data_format="channels_first")
    px, g = pack_images(ims, 4, 2, 2)
    assert torch.equal(g, ref["image_grid_thw"])
    assert torch.allclose(px, ref["pixel_values"])
