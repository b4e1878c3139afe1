"""Checks of exercise 10 (Qwen2-VL / Qwen2.5-VL): M-RoPE position ids for text and images of
different grids, the block-major patch order of the 2×2 merge, and the window partition.

References (Wang et al. 2024, "Qwen2-VL", §2.1; Bai et al. 2025, "Qwen2.5-VL", §2.1):
``minivlm.models.qwen_vl``'s ``mrope_position_ids``, ``vision_positions`` (one image) and
``window_partition`` (lengths as a tensor).
"""

from __future__ import annotations

import torch

from minivlm.grading.core import Case, exercise_checks

Tensor = torch.Tensor
EXERCISE = "10_qwen_vl"
register_check = exercise_checks(EXERCISE)
IMG = 7


# ----------------------------------------------------------------------------- M-RoPE ids
def _ref_mrope(input_ids: Tensor, image_grid_thw: Tensor, image_token_id: int, merge_size: int,
               attention_mask: Tensor) -> Tensor:
    from minivlm.models.qwen_vl import mrope_position_ids

    return mrope_position_ids(input_ids, image_grid_thw, image_token_id, merge_size,
                              attention_mask)


def _mrope_variant(how: str):
    def mrope_positions(input_ids, image_grid_thw, image_token_id, merge_size, attention_mask):
        B, T = input_ids.shape
        pos = torch.zeros(3, B, T, dtype=torch.long)
        grids = iter(image_grid_thw.tolist())
        for b in range(B):
            cur, t = 0, 0
            while t < T:
                if how not in ("count_pads", "pads_after") and not attention_mask[b, t]:
                    t += 1
                    continue
                if input_ids[b, t] != image_token_id:
                    pos[:, b, t] = cur
                    cur, t = cur + 1, t + 1
                    continue
                _, h, w = next(grids)
                m = 1 if how == "no_merge" else merge_size
                gh, gw = h // merge_size, w // merge_size
                for k in range(gh * gw):
                    r, c = divmod(k, gw)
                    if how == "swap":
                        r, c = c, r
                    pos[:, b, t + k] = torch.tensor([cur, cur + r, cur + c])
                if how == "area":
                    cur += gh * gw
                elif how == "plus_one":
                    cur += max(gh, gw) + 1
                else:
                    cur += max(h, w) // m
                t += gh * gw
        if how == "pads_after":  # counted over every slot, padding reset to 0 afterwards
            pos = pos.masked_fill(attention_mask[None] == 0, 0)
        return pos

    return mrope_positions


def _mrope_case(gen: torch.Generator, label: str, rows: list[list], grids: list[tuple[int, ...]],
                merge: int = 2, hint: str | None = None, left: bool = False) -> Case:
    """rows: per row a list of items: an int n (n random text tokens) or "img" (next grid).
    ``left``: pad on the left (batched generation) rather than on the right."""
    gi = iter(grids)
    seqs = []
    for items in rows:
        s: list[int] = []
        for it in items:
            if it == "img":
                t, h, w = next(gi)
                s += [IMG] * (t * h * w // merge**2)
            else:
                s += torch.randint(8, 40, (it,), generator=gen).tolist()
        seqs.append(s)
    T = max(map(len, seqs)) + 2
    ids = torch.zeros(len(seqs), T, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, s in enumerate(seqs):
        at = slice(T - len(s), T) if left else slice(0, len(s))
        ids[b, at], mask[b, at] = torch.tensor(s), 1
    return Case(label, ids, torch.tensor(grids), IMG, merge, mask, hint=hint)


@register_check(
    "mrope_positions(input_ids, image_grid_thw, image_token_id, merge_size, attention_mask)",
    _ref_mrope, points=3,
    returns="(3, B, T)",
    mistakes=[
        ("the text after an image resumes at start + (number of image tokens); M-RoPE resumes "
         "at start + max(h, w) / merge_size (§2.1)", _mrope_variant("area")),
        ("the text after an image resumes one too far: start + max(h, w)/merge_size, no +1",
         _mrope_variant("plus_one")),
        ("the image's size is counted in patches; after the merge an image is h/m x w/m tokens "
         "and the text resumes at start + max(h, w) / merge_size", _mrope_variant("no_merge")),
        ("rows and columns swapped: token k of an image is at row k // (w/m), column k % (w/m)",
         _mrope_variant("swap")),
        ("padding is counted: only tokens with attention_mask 1 advance the position (padding "
         "keeps 0)", _mrope_variant("count_pads")),
        ("the positions were counted over every slot and the padding reset to 0 afterwards: "
         "with left padding the first real token must get position 0, so count only the "
         "tokens with attention_mask 1", _mrope_variant("pads_after")),
    ],
)
def mrope_cases(gen: torch.Generator):
    yield _mrope_case(gen, "text, a 4x6-patch image, text", [[3, "img", 2]], [(1, 4, 6)])
    yield _mrope_case(gen, "two rows, images of different grids, right padding",
                      [[2, "img", 4], [1, "img", 1, "img", 3]], [(1, 6, 2), (1, 2, 2), (1, 4, 8)],
                      hint="images are consumed in batch-major order of appearance")
    yield _mrope_case(gen, "a tall image (h > w) and a wide one", [[1, "img", 2, "img", 1]],
                      [(1, 8, 4), (1, 2, 6)])
    yield _mrope_case(gen, "a text-only row next to an image row", [[5], [2, "img", 2]],
                      [(1, 4, 4)])
    yield _mrope_case(gen, "merge size 1 (every patch a token)", [[2, "img", 2]], [(1, 3, 5)],
                      merge=1)
    yield _mrope_case(gen, "left padding (batched generation)", [[1, "img", 3], [4]],
                      [(1, 4, 4)], left=True,
                      hint="the first real token of a row is at position 0 wherever the "
                           "padding sits: count only the tokens with attention_mask 1")


# ----------------------------------------------------------------------------- merge order
def _ref_merge_order(h: int, w: int, merge_size: int) -> Tensor:
    from minivlm.models.qwen_vl import vision_positions

    return vision_positions(torch.tensor([[1, h, w]]), merge_size)


def _order_variant(how: str):
    def merge_order(h, w, merge_size):
        m = merge_size
        r, c = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        if how == "raster":
            return torch.stack([r.flatten(), c.flatten()], -1)
        perm = (1, 2) if how != "windows_by_column" else (3, 0)
        out = []
        for z in (r, c):
            z = z.reshape(h // m, m, w // m, m)
            if how == "windows_by_column":
                z = z.permute(2, 0, 1, 3)  # windows column-major, rows then cols inside
            elif how == "inner_transposed":
                z = z.permute(0, 2, 3, 1)  # inside a window: column-major
            else:
                z = z.transpose(*perm)
            out.append(z.flatten())
        return torch.stack(out, -1)

    return merge_order


@register_check(
    "merge_order(h, w, merge_size)", _ref_merge_order, points=2,
    returns="(h*w, 2)",
    mistakes=[
        ("raster order: Qwen2-VL lists patches block-major, the m x m patches of each merge "
         "window together, so the merger concatenates consecutive rows", _order_variant("raster")),
        ("inside a window the patches go column by column; they go in raster order (row 0: "
         "(0,0), (0,1); row 1: (1,0), (1,1))", _order_variant("inner_transposed")),
        ("the windows go column by column; they go in raster order over the image",
         _order_variant("windows_by_column")),
    ],
)
def order_cases(gen: torch.Generator):
    yield Case("a 4x4 grid", 4, 4, 2)
    yield Case("a wide 2x6 grid", 2, 6, 2)
    yield Case("a tall 6x4 grid", 6, 4, 2)
    yield Case("merge size 3 on a 6x9 grid", 6, 9, 3)


# ----------------------------------------------------------------------------- windows
def _ref_windows(grid_thw: Tensor, merge_size: int, window: int) -> tuple[Tensor, Tensor]:
    from minivlm.models.qwen_vl import window_partition

    order, lengths = window_partition(grid_thw, merge_size, window)
    return order, torch.tensor(lengths)


def _window_variant(how: str):
    def window_partition(grid_thw, merge_size, window):
        order, lengths, offset = [], [], 0
        for t, h, w in grid_thw.tolist():
            gh, gw = h // merge_size, w // merge_size
            idx = torch.arange(t * gh * gw).view(t, gh, gw)
            starts = [(r0, c0) for r0 in range(0, gh, window) for c0 in range(0, gw, window)]
            if how == "by_column":
                starts = sorted(starts, key=lambda rc: (rc[1], rc[0]))
            if how == "drop_edges":
                starts = [(r0, c0) for r0, c0 in starts if r0 + window <= gh and c0 + window <= gw]
            for f in range(t):
                for r0, c0 in starts:
                    win = idx[f, r0:r0 + window, c0:c0 + window].flatten()
                    order.append(win + (0 if how == "no_offset" else offset))
                    lengths.append(win.numel() * (1 if how == "tokens" else merge_size**2))
            offset += t * gh * gw
        return torch.cat(order), torch.tensor(lengths)

    return window_partition


@register_check(
    "window_partition(grid_thw, merge_size, window)", _ref_windows, points=2,
    returns={"order": "(N/m^2,)", "lengths": "(num_windows,)"},
    mistakes=[
        ("lengths count merged tokens; the vision blocks attend over patches, m^2 per merged "
         "token", _window_variant("tokens")),
        ("windows go column by column; Qwen2.5-VL takes them in raster order",
         _window_variant("by_column")),
        ("the partial windows at the right and bottom edges are dropped; they are kept, smaller",
         _window_variant("drop_edges")),
        ("the second image's indices start at 0 again; they continue after the first image's "
         "merged tokens", _window_variant("no_offset")),
    ],
)
def window_cases(gen: torch.Generator):
    yield Case("an 8x8-patch image, windows of 2 merged tokens", torch.tensor([[1, 8, 8]]), 2, 2)
    yield Case("edge windows: a 6x10 image", torch.tensor([[1, 6, 10]]), 2, 2,
               hint="a 3x5 merged grid has windows of 2x2, 2x1, 1x2 and 1x1 tokens")
    yield Case("two images of different grids", torch.tensor([[1, 4, 4], [1, 8, 12]]), 2, 2)
    yield Case("window larger than the image", torch.tensor([[1, 4, 6]]), 2, 4)
