"""Interleaved shapes-world sequences: layout, labels, images matching the text, determinism."""

from __future__ import annotations

import pytest
import torch

from minivlm.data import COLORS, shapes_tokenizer
from minivlm.data.interleaved import caption_sequences, few_shot_episodes, single_object_bank
from minivlm.models.flamingo import image_attention_mask


@pytest.fixture(scope="module")
def bank():
    return single_object_bank(120, seed=0)


def test_bank_has_one_colour_per_image(bank):
    px, col = bank
    assert px.shape == (120, 3, 64, 64) and px.min() >= -1 and px.max() <= 1
    assert col.shape == (120,) and set(col.tolist()) == set(range(len(COLORS)))


def test_caption_sequences_name_each_image_colour(bank):
    _, col = bank
    tok = shapes_tokenizer()
    b = caption_sequences(col, 5, 3, tok, seed=1)
    assert b.input_ids.shape == (5, 1 + 3 * 3) and b.image_index.shape == (5, 3)
    words = [tok.vocab[c] for c in COLORS]
    img_pos = (b.input_ids == tok.vocab["<image>"]).nonzero()[:, 1].view(5, 3)
    for e in range(5):
        for n in range(3):
            said = int(b.input_ids[e, img_pos[e, n] + 1])
            assert said == words[int(col[b.image_index[e, n]])]
            assert b.labels[e, img_pos[e, n] + 1] == said
    assert (b.labels != -100).sum() == 15
    assert torch.equal(caption_sequences(col, 5, 3, tok, seed=1).input_ids, b.input_ids)


def test_few_shot_answer_only_from_context(bank):
    _, col = bank
    tok = shapes_tokenizer()
    names = list(range(81, 89))
    for shots in (1, 2, 4):
        b = few_shot_episodes(col, 20, shots, names, tok, seed=shots)
        assert b.image_index.shape == (20, shots + 1)
        assert ((b.labels != -100).sum(1) == 1).all() and torch.equal(b.labels[:, -1], b.answer)
        for e in range(20):
            ids = b.input_ids[e]
            sup_names = ids[2:-2:3].tolist()  # the name after each support <image>
            sup_cols = col[b.image_index[e, :-1]].tolist()
            assert len(set(sup_names)) == shots and len(set(sup_cols)) == shots
            q_col = int(col[b.image_index[e, -1]])
            assert q_col in sup_cols  # the query's colour was named in the context
            assert int(b.answer[e]) == sup_names[sup_cols.index(q_col)]
            assert b.image_index[e, -1] not in b.image_index[e, :-1]  # a new picture
        m = image_attention_mask(b.input_ids, tok.vocab["<image>"], shots + 1)
        assert m[:, -2:, -1].all() and not m[:, 0].any()
    # names are redrawn every episode
    b = few_shot_episodes(col, 50, 2, names, tok, seed=0)
    assert len(set(b.answer.tolist())) > 4
    with pytest.raises(ValueError, match="shots"):
        few_shot_episodes(col, 2, 9, names, tok)
