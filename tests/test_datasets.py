"""Task datasets on the shapes world, and loaders for COCO / image folders / LLaVA JSON."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from minivlm.data import (
    ANSWERS,
    IGNORE_INDEX,
    NEGATIVE_KINDS,
    QTYPES,
    CaptionDataset,
    ClassificationDataset,
    CocoCaptions,
    DialogueDataset,
    ImageFolderClassification,
    ImageTextCollator,
    ITMDataset,
    LlavaConversations,
    ShapesWorld,
    Tokenizer,
    VQADataset,
    caption_truth,
    encode_chat,
    image_transform,
    make_loader,
    move_to,
    shapes_tokenizer,
)


@pytest.fixture(scope="module")
def data():
    return ShapesWorld().generate(64, seed=3)


@pytest.fixture(scope="module")
def tok():
    return shapes_tokenizer(strict=True)


def _check_text_batch(batch, tok, B):
    assert batch["pixel_values"].shape == (B, 3, 64, 64)
    assert batch["pixel_values"].dtype == torch.float32
    assert batch["pixel_values"].min() >= -1 and batch["pixel_values"].max() <= 1
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert ids.dtype == mask.dtype == torch.long and ids.shape == mask.shape and ids.shape[0] == B
    assert set(mask.unique().tolist()) <= {0, 1}
    assert (ids[mask == 0] == tok.pad_id).all()
    assert all(isinstance(v, torch.Tensor) for v in batch.values())


def test_caption_dataset(data, tok):
    ds = CaptionDataset(data, tok)
    batch = next(iter(make_loader(ds, batch_size=8, shuffle=False)))
    _check_text_batch(batch, tok, 8)
    assert batch["index"].tolist() == list(range(8))
    assert (batch["input_ids"][:, 0] == tok.bos_id).all()
    lengths = batch["attention_mask"].sum(1)
    assert (batch["input_ids"][torch.arange(8), lengths - 1] == tok.eos_id).all()
    assert tok.batch_decode(batch["input_ids"]) == [data.caption(i) for i in range(8)]
    assert torch.allclose(batch["pixel_values"][0], data.pixel_values(0))

    rnd = CaptionDataset(data, tok, mode="random", seed=1)
    texts0 = [rnd.text(i) for i in range(len(data))]
    assert texts0 == [rnd.text(i) for i in range(len(data))]  # fixed within an epoch
    assert all(t in data.captions(i) for i, t in enumerate(texts0))
    rnd.set_epoch(1)
    assert texts0 != [rnd.text(i) for i in range(len(data))]
    full = CaptionDataset(data, tok, mode="all")
    assert len(full) == sum(len(data.captions(i)) for i in range(len(data)))
    bert = CaptionDataset(data, tok, add_bos=False, add_eos=False, add_cls=True, add_sep=True)
    b = bert.collate([bert[0], bert[1]])
    assert (b["input_ids"][:, 0] == tok.cls_id).all()
    with pytest.raises(ValueError, match="mode"):
        CaptionDataset(data, tok, mode="sometimes")
    with pytest.raises(TypeError, match="ShapesData"):
        CaptionDataset([1, 2], tok)
    with pytest.raises(TypeError, match="add_sos"):  # a misspelt text option is named
        CaptionDataset(data, tok, add_sos=True)


def test_itm_dataset(data, tok):
    ds = ITMDataset(data, tok)
    assert len(ds) == 2 * len(data)
    batch = ds.collate([ds[k] for k in range(16)])
    _check_text_batch(batch, tok, 16)
    assert batch["itm_labels"].tolist() == [1, 0] * 8
    assert (batch["index"][0::2] == batch["index"][1::2]).all()
    assert (batch["kind"][0::2] == batch["kind"][1::2]).all()
    texts = tok.batch_decode(batch["input_ids"])
    for k in range(0, 16, 2):
        sc = data.scenes[int(batch["index"][k])]
        assert texts[k] != texts[k + 1]
        assert caption_truth(sc, texts[k]) is True
        assert caption_truth(sc, texts[k + 1]) is False
    kinds = {int(ds[k]["kind"]) for k in range(len(ds))}
    assert len(kinds) >= 4
    only = ITMDataset(data, tok, kinds=["swap_relation"])
    assert len(only) == 2 * sum(len(s.objects) > 1 for s in data.scenes) > 0
    assert {NEGATIVE_KINDS[only[k]["kind"]] for k in range(len(only))} == {"swap_relation"}
    with pytest.raises(ValueError, match="kinds"):
        ITMDataset(data, tok, kinds=["wrong_mood"])


def test_classification_dataset(data):
    for task in ("shape", "color", "size", "count"):
        ds = ClassificationDataset(data, task)
        batch = next(iter(make_loader(ds, batch_size=10, shuffle=True, seed=0)))
        assert batch["pixel_values"].shape == (10, 3, 64, 64)
        assert batch["labels"].dtype == torch.long
        assert torch.equal(batch["labels"], data.labels(task)[batch["index"]])
        assert ds.num_classes == len(ds.class_names)
    a = [b["index"] for b in make_loader(ClassificationDataset(data), 16, seed=5)]
    b = [b["index"] for b in make_loader(ClassificationDataset(data), 16, seed=5)]
    assert all(torch.equal(x, y) for x, y in zip(a, b))  # seeded shuffle


def test_vqa_dataset(data, tok):
    ds = VQADataset(data, tok)
    assert len(ds) == sum(len(data.vqa(i)) for i in range(len(data)))
    batch = ds.collate([ds[k] for k in range(20)])
    _check_text_batch(batch, tok, 20)
    answers = [ANSWERS[a] for a in batch["answer"].tolist()]
    expected = [(q, a, t) for i in range(len(data)) for q, a, t in data.vqa(i)][:20]
    assert answers == [a for _, a, _ in expected]
    assert tok.batch_decode(batch["input_ids"]) == [q for q, _, _ in expected]
    assert [QTYPES[t] for t in batch["qtype"].tolist()] == [t for _, _, t in expected]
    counts = VQADataset(data, tok, qtypes=["count"])
    assert {QTYPES[counts[k]["qtype"]] for k in range(len(counts))} == {"count"}
    with pytest.raises(ValueError, match="qtypes"):
        VQADataset(data, tok, qtypes=["colour"])


def test_dialogue_dataset(data, tok):
    ds = DialogueDataset(data, tok, num_image_tokens=4)
    batch = ds.collate([ds[i] for i in range(6)])
    _check_text_batch(batch, tok, 6)
    ids, labels, mask = batch["input_ids"], batch["labels"], batch["attention_mask"]
    assert labels.shape == ids.shape
    assert ((ids == tok.image_id).sum(1) == 4).all()  # one image token per image feature
    assert (labels[mask == 0] == IGNORE_INDEX).all()
    assert (labels[ids == tok.image_id] == IGNORE_INDEX).all()
    keep = labels != IGNORE_INDEX
    assert (labels[keep] == ids[keep]).all()
    for i in range(6):
        turns = data.dialogue(i)
        answers = [t["value"] for t in turns if t["from"] == "gpt"]
        # the supervised tokens are exactly the assistant's answers, each ending with [EOS]
        sup = [int(x) for x in ids[i][keep[i]]]
        assert sup.count(tok.eos_id) == len(answers)
        assert tok.decode(sup) == "".join(answers)
        assert ids[i, 0] == tok.bos_id
    one = DialogueDataset(data, tok, task="count")
    assert tok.decode(one[0]["input_ids"]).endswith(
        "assistant: " + data.dialogue(0, "count")[1]["value"]
    )
    prompt = encode_chat(tok, data.dialogue(0, "locate")[:1], add_generation_prompt=True)
    assert tok.decode(prompt["input_ids"], skip_special_tokens=False).endswith("?\nassistant:")
    with pytest.raises(ValueError, match="turn 0"):
        encode_chat(tok, [{"from": "bot", "value": "hi"}])
    short = DialogueDataset(data, tok, max_length=10)
    assert len(short[0]["input_ids"]) == len(short[0]["labels"]) == 10


def test_move_to(data, tok):
    batch = CaptionDataset(data, tok).collate([CaptionDataset(data, tok)[0]])
    moved = move_to({**batch, "note": "kept"}, "cpu")
    assert moved["note"] == "kept" and torch.equal(moved["input_ids"], batch["input_ids"])


# ---------------------------------------------------------------------------- real formats
def _png(path, color=(255, 0, 0), size=(20, 12)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


def _coco(tmp_path, **edits):
    _png(tmp_path / "img" / "a.png")
    _png(tmp_path / "img" / "b.jpg", (0, 0, 255))
    doc = {
        "images": [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "b.jpg"}],
        "annotations": [
            {"id": 10, "image_id": 1, "caption": "a red picture"},
            {"id": 11, "image_id": 2, "caption": "a blue picture"},
            {"id": 12, "image_id": 1, "caption": "red everywhere"},
        ],
    }
    doc.update(edits)
    path = tmp_path / "captions.json"
    path.write_text(json.dumps(doc))
    return path


def test_coco_captions(tmp_path):
    path = _coco(tmp_path)
    ds = CocoCaptions(path, tmp_path / "img")
    assert len(ds) == 2 and ds.ids == [1, 2]
    image, caps = ds[0]
    assert image.size == (20, 12) and caps == ["a red picture", "red everywhere"]
    ds = CocoCaptions(path, tmp_path / "img", transform=image_transform(16))
    x, caps = ds[1]
    assert x.shape == (3, 16, 16)
    assert torch.allclose(x[2], torch.ones(16, 16), atol=0.03)  # blue JPEG
    assert torch.allclose(x[0], -torch.ones(16, 16), atol=0.03)
    coco_tok = Tokenizer.from_texts(c for i in range(len(ds)) for c in ds.captions[i])
    batch = ImageTextCollator(coco_tok)([ds[0], ds[1]])
    assert batch["pixel_values"].shape == (2, 3, 16, 16)
    assert coco_tok.batch_decode(batch["input_ids"]) == ["a red picture", "a blue picture"]


@pytest.mark.parametrize(
    "edits, message",
    [
        ({"images": {"id": 1}}, r"'images' must be a list"),
        ({"images": [{"id": 1}]}, r"images\[0\] \(id=1\) is missing 'file_name'"),
        (
            {"images": [{"id": 1, "file_name": "nope.png"}]},
            r"images\[0\] \(id=1\): image file not found",
        ),
        ({"images": [{"id": 1, "file_name": 5}]}, r"images\[0\].*'file_name' must be a str"),
        (
            {"annotations": [{"id": 7, "image_id": 9, "caption": "x"}]},
            r"annotations\[0\] \(id=7\): image_id 9 is not in 'images'",
        ),
        (
            {"annotations": [{"id": 7, "image_id": 1}]},
            r"annotations\[0\] \(id=7\) is missing 'caption'",
        ),
        (
            {"annotations": [{"image_id": 1, "caption": 3}]},
            r"annotations\[0\]: 'caption' must be a str",
        ),
    ],
)
def test_coco_malformed(tmp_path, edits, message):
    path = _coco(tmp_path, **edits)
    with pytest.raises(ValueError, match=message) as err:
        CocoCaptions(path, tmp_path / "img")
    assert "captions.json" in str(err.value)


def test_coco_bad_json_and_missing_keys(tmp_path):
    _png(tmp_path / "img" / "a.png")
    path = tmp_path / "broken.json"
    path.write_text('{\n  "images": [\n    {"id": 1, "file_name": "a.png"},,\n  ]\n}')
    with pytest.raises(ValueError, match=r"broken.json: invalid JSON at line 3, column"):
        CocoCaptions(path, tmp_path / "img")
    path.write_text(json.dumps({"images": []}))
    with pytest.raises(ValueError, match="missing top-level key 'annotations'"):
        CocoCaptions(path, tmp_path / "img")
    path.write_text("[]")
    with pytest.raises(ValueError, match="expected a JSON object"):
        CocoCaptions(path, tmp_path / "img")
    with pytest.raises(FileNotFoundError):
        CocoCaptions(tmp_path / "absent.json", tmp_path / "img")
    # a file that exists but is not an image fails when read, naming it
    (tmp_path / "img" / "fake.png").write_text("not an image")
    path.write_text(json.dumps({"images": [{"id": 3, "file_name": "fake.png"}], "annotations": []}))
    ds = CocoCaptions(path, tmp_path / "img")
    with pytest.raises(ValueError, match=r"id=3.*cannot read image .*fake.png"):
        ds[0]


def test_image_folder(tmp_path):
    root = tmp_path / "folder"
    _png(root / "dog" / "1.png", (10, 200, 10))
    _png(root / "cat" / "2.jpg")
    _png(root / "cat" / "sub" / "3.png")
    (root / "cat" / "notes.txt").write_text("ignored")
    ds = ImageFolderClassification(root)
    assert ds.classes == ["cat", "dog"] and ds.targets == [0, 0, 1] and len(ds) == 3
    image, label = ds[2]
    assert label == 1 and np.asarray(image)[0, 0].tolist() == [10, 200, 10]
    x, _ = ImageFolderClassification(root, transform=image_transform(8))[0]
    assert x.shape == (3, 8, 8)
    (root / "empty").mkdir()
    with pytest.raises(ValueError, match="class folder 'empty' holds no images"):
        ImageFolderClassification(root)
    with pytest.raises(ValueError, match="no class subfolders"):
        ImageFolderClassification(root / "dog")
    with pytest.raises(FileNotFoundError):
        ImageFolderClassification(tmp_path / "missing")


def _llava(tmp_path, records, name="chat.json"):
    _png(tmp_path / "images" / "x.png")
    path = tmp_path / name
    if name.endswith(".jsonl"):
        path.write_text("\n".join(json.dumps(r) for r in records))
    else:
        path.write_text(json.dumps(records))
    return path


GOOD = [
    {
        "id": "a1",
        "image": "x.png",
        "conversations": [
            {"from": "human", "value": "<image>\nwhat colour is it?"},
            {"from": "gpt", "value": "red"},
        ],
    },
    {
        "id": "t2",
        "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}],
    },
]


def test_llava_conversations(tmp_path):
    ds = LlavaConversations(_llava(tmp_path, GOOD), tmp_path / "images")
    assert len(ds) == 2
    item = ds[0]
    assert item["id"] == "a1" and item["image"].size == (20, 12)
    assert item["conversations"] == GOOD[0]["conversations"]
    assert ds[1]["image"] is None
    jl = LlavaConversations(_llava(tmp_path, GOOD, "chat.jsonl"), tmp_path / "images")
    assert jl[0]["conversations"] == GOOD[0]["conversations"]
    # records convert to model inputs with the chat encoder
    chat_tok = Tokenizer.from_texts(t["value"] for r in GOOD for t in r["conversations"])
    enc = encode_chat(chat_tok, item["conversations"], num_image_tokens=3)
    assert enc["input_ids"].count(chat_tok.image_id) == 3
    assert (
        chat_tok.decode([i for i, y in zip(enc["input_ids"], enc["labels"]) if y != IGNORE_INDEX])
        == "red"
    )


@pytest.mark.parametrize(
    "records, message",
    [
        ({"id": 1}, "expected a JSON list"),
        ([{"id": "r0"}], r"record\[0\] \(id='r0'\) is missing 'conversations'"),
        ([GOOD[1], {"conversations": []}], r"record\[1\] is missing 'id'"),
        (
            [{"id": 5, "conversations": []}],
            r"record\[0\] \(id=5\): 'conversations' must be a non-empty list",
        ),
        (
            [{"id": 5, "conversations": [{"from": "robot", "value": "x"}]}],
            r"record\[0\] \(id=5\): conversations\[0\]: 'from' must be one of",
        ),
        (
            [{"id": 5, "conversations": [{"from": "gpt", "value": 3}]}],
            r"conversations\[0\]: 'value' must be a str",
        ),
        (
            [{"id": 5, "image": "gone.png", "conversations": GOOD[0]["conversations"]}],
            r"record\[0\] \(id=5\): image file not found: .*gone.png",
        ),
        (
            [{"id": 5, "conversations": GOOD[0]["conversations"]}],
            r"record\[0\] \(id=5\): a turn has <image> but the record has no 'image'",
        ),
    ],
)
def test_llava_malformed(tmp_path, records, message):
    path = _llava(tmp_path, records)
    with pytest.raises(ValueError, match=message) as err:
        LlavaConversations(path, tmp_path / "images")
    assert "chat.json" in str(err.value)


def test_llava_bad_json(tmp_path):
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps(GOOD[1]) + "\n{'id': 2}\n")
    with pytest.raises(ValueError, match=r"chat.jsonl: invalid JSON at line 2, column 2"):
        LlavaConversations(path)
