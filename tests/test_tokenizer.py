"""Word-level tokenizer: fixed special ids, round trips, padding, files and the HF adapter."""

import json

import pytest
import torch

from minivlm.data.tokenizer import (
    SPECIAL_TOKENS,
    HFTokenizerAdapter,
    Tokenizer,
    shapes_tokenizer,
    split_words,
)


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return shapes_tokenizer()


def test_special_ids(tok):
    assert SPECIAL_TOKENS == [
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
        "[BOS]",
        "[EOS]",
        "<image>",
    ]
    ids = (
        tok.pad_id,
        tok.unk_id,
        tok.cls_id,
        tok.sep_id,
        tok.mask_id,
        tok.bos_id,
        tok.eos_id,
        tok.image_id,
    )
    assert ids == tuple(range(8))
    assert tok.convert_ids_to_tokens(list(range(8))) == SPECIAL_TOKENS
    assert tok.vocab_size == len(tok) == len(tok.tokens) > 60
    # ids do not depend on the order words were given in
    other = Tokenizer(list(reversed(tok.tokens[8:])))
    assert other.encode("a red circle") != tok.encode("a red circle")
    assert Tokenizer(tok.tokens[8:]).encode("a red circle") == tok.encode("a red circle")


def test_split_and_round_trip(tok):
    assert split_words("Is there a RED circle?\n") == [
        "is",
        "there",
        "a",
        "red",
        "circle",
        "?",
        "\n",
    ]
    assert split_words("<image>\nwhat?") == ["<image>", "\n", "what", "?"]
    assert split_words("[CLS] a [sep]") == ["[CLS]", "a", "[SEP]"]
    for text in [
        "two objects: a small red circle and a large blue square",
        "four objects: a red cross, a blue square, a purple diamond and a red triangle",
        "is the red circle left of the blue square?",
        "yes, there is an orange cross.",
    ]:
        ids = tok.encode(text)
        assert tok.unk_id not in ids
        assert tok.decode(ids) == text
    ids = tok.encode("<image>\nwhere is the red circle?")
    assert ids[0] == tok.image_id
    assert tok.decode(ids, skip_special_tokens=False) == "<image>\nwhere is the red circle?"
    assert tok.decode(ids) == "\nwhere is the red circle?"
    assert tok.decode(torch.tensor(ids)) == tok.decode(ids)


def test_special_flags_and_unknown_words(tok):
    ids = tok.encode("a red circle", add_bos=True, add_eos=True)
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id and len(ids) == 5
    ids = tok.encode("a red circle", add_cls=True, add_sep=True)
    assert ids[0] == tok.cls_id and ids[-1] == tok.sep_id
    ids = tok.encode("a zebra", add_cls=True)
    assert ids == [tok.cls_id, tok.token_to_id["a"], tok.unk_id]
    assert tok.decode(ids) == "a [UNK]"
    with pytest.raises(ValueError, match="zebra"):
        tok.encode("a zebra", strict=True)
    with pytest.raises(ValueError, match="zebra"):
        shapes_tokenizer(strict=True).encode("a striped zebra".replace("striped ", ""))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([10_000])


def test_batch_padding_and_truncation(tok):
    texts = ["a red circle", "there are three shapes in the image", "yes"]
    out = tok(texts, add_bos=True, add_eos=True)
    ids, mask = out["input_ids"], out["attention_mask"]
    assert ids.dtype == mask.dtype == torch.long and ids.shape == (3, 9)
    assert mask.sum(1).tolist() == [5, 9, 3]
    assert (ids[mask == 0] == tok.pad_id).all()
    assert mask[0].tolist() == [1] * 5 + [0] * 4  # padded on the right
    assert tok.batch_decode(ids) == texts
    # truncation drops words but keeps the requested special tokens
    short = tok(texts, max_length=4, add_bos=True, add_eos=True)["input_ids"]
    assert short.shape == (3, 4) and (short[:, -1] != tok.pad_id).sum() == 2
    assert short[1].tolist() == [tok.bos_id, *tok.encode("there are"), tok.eos_id]
    fixed = tok(["a red circle"], max_length=8, padding="max_length")
    assert fixed["input_ids"].shape == (1, 8) and fixed["attention_mask"].sum() == 3
    single = tok("a red circle")
    assert single["input_ids"].shape == (1, 3)
    lists = tok(texts, padding=False, return_tensors=None)
    assert [len(x) for x in lists["input_ids"]] == [3, 7, 1]
    with pytest.raises(ValueError, match="different lengths"):
        tok(texts, padding=False)
    with pytest.raises(ValueError, match="no room"):
        tok(texts, max_length=1, add_bos=True, add_eos=True)
    with pytest.raises(ValueError, match="truncation"):
        tok(texts, max_length=2, truncation=False, padding="max_length")
    labels = tok.pad([[1, 2], [3]], pad_value=-100)["input_ids"]
    assert labels.tolist() == [[1, 2], [3, -100]]


def test_from_texts():
    t = Tokenizer.from_texts(["The cat sat.", "the dog sat", "a cat"], min_freq=2)
    assert t.tokens[8:] == ["cat", "sat", "the"]
    t2 = Tokenizer.from_texts(["b b b a a c"], max_size=2, extra=["zzz"])
    assert t2.tokens[8:] == ["a", "b", "zzz"]
    with pytest.raises(ValueError, match="duplicate"):
        Tokenizer(["a", "b", "a"])
    with pytest.raises(TypeError):
        Tokenizer("abc")


def test_save_load(tmp_path, tok):
    path = tok.save(tmp_path / "tok.json")
    loaded = Tokenizer.load(path)
    assert loaded.tokens == tok.tokens
    assert loaded.encode("is there a red circle?") == tok.encode("is there a red circle?")
    assert not list(tmp_path.glob(".*tmp"))  # atomic write leaves no temp file

    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "minivlm.Tokenizer",\n "tokens": [1, 2,')
    with pytest.raises(ValueError, match=r"bad.json.*line 2"):
        Tokenizer.load(bad)
    bad.write_text(json.dumps({"tokens": ["a"]}))
    with pytest.raises(ValueError, match="not a minivlm tokenizer"):
        Tokenizer.load(bad)
    payload = json.loads(path.read_text())
    payload["tokens"] = payload["tokens"][1:]
    bad.write_text(json.dumps(payload))
    with pytest.raises(ValueError, match="special tokens"):
        Tokenizer.load(bad)
    payload = json.loads(path.read_text())
    payload["tokens"].append("red")
    bad.write_text(json.dumps(payload))
    with pytest.raises(ValueError, match="duplicate"):
        Tokenizer.load(bad)
    payload["tokens"] = "abc"
    bad.write_text(json.dumps(payload))
    with pytest.raises(ValueError, match="list of non-empty strings"):
        Tokenizer.load(bad)
    with pytest.raises(FileNotFoundError):
        Tokenizer.load(tmp_path / "missing.json")


def test_hf_adapter(tmp_path):
    transformers = pytest.importorskip("transformers")
    words = [
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
        "a",
        "red",
        "circle",
        "blue",
        "square",
        "?",
        "is",
        "there",
    ]
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(words) + "\n")
    hf = transformers.BertTokenizerFast(vocab_file=str(vocab))
    if len(hf) != len(words):  # transformers >= 5 takes the file as `vocab`
        hf = transformers.BertTokenizerFast(vocab=str(vocab))
    ad = HFTokenizerAdapter(hf)
    assert (ad.pad_id, ad.unk_id, ad.cls_id, ad.sep_id, ad.mask_id) == (0, 1, 2, 3, 4)
    assert ad.bos_id is None and ad.image_id is None
    assert ad.vocab_size == len(ad) == len(words)
    assert ad.encode("is there a red circle?", add_cls=True, add_sep=True) == [
        2,
        11,
        12,
        5,
        6,
        7,
        10,
        3,
    ]
    # the same as HF's own special-token handling
    assert (
        ad.encode("a blue square", add_cls=True, add_sep=True) == hf("a blue square")["input_ids"]
    )
    out = ad(["a red circle", "is there a blue square?"], add_cls=True, add_sep=True)
    assert out["input_ids"].shape == (2, 8)
    assert out["attention_mask"].sum(1).tolist() == [5, 8]
    assert out["input_ids"][0, 5:].tolist() == [0, 0, 0]
    assert ad.batch_decode(out["input_ids"]) == ["a red circle", "is there a blue square?"]
    assert ad.encode("a zebra")[-1] == ad.unk_id
    with pytest.raises(ValueError, match="no bos"):
        ad.encode("a", add_bos=True)
    with pytest.raises(TypeError):
        HFTokenizerAdapter(object())


def test_strict_tokenizer_lists_every_unknown_word_once():
    tok = shapes_tokenizer(strict=True)
    with pytest.raises(ValueError, match=r"unknown words 'zebra', 'striped': not in"):
        tok.encode("is the zebra striped? the zebra")
    assert tok.unknown_words("is the Zebra striped? the zebra") == ["zebra", "striped"]
    assert tok.unknown_words("is there a red circle?") == []
    assert shapes_tokenizer().encode("a zebra")[-1] == tok.unk_id  # not strict: [UNK]
