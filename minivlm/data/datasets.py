"""Torch datasets: one per training task on the shapes world, and loaders for real formats.

Shapes-world datasets (``data = ShapesWorld().generate(...)``, ``tok = shapes_tokenizer()``)::

    CaptionDataset(data, tok)        image + caption          -> CLIP/ALBEF contrastive, captioning
    ITMDataset(data, tok)            image + caption, 1 if it matches, 0 for a hard negative
    ClassificationDataset(data, "shape")   image + class id   -> linear probes, zero-shot
    VQADataset(data, tok)            image + question + answer id (index in ``ANSWERS``)
    DialogueDataset(data, tok)       LLaVA-style chat: input ids with <image> tokens + LM labels

Each has a ``collate`` method for ``DataLoader(ds, collate_fn=ds.collate)`` (or use
``make_loader(ds, batch_size)``). A batch is a dict of tensors only:

    pixel_values    (B, 3, H, W) float in [-1, 1]
    input_ids       (B, T) long, padded on the right with [PAD] = 0
    attention_mask  (B, T) long, 1 for tokens, 0 for padding
    index           (B,) long, the image index in ``data``
    + labels (classification; chat LM targets with -100 where no loss), itm_labels, kind,
      answer, qtype, as documented on each dataset.

Text gets ``[BOS] ... [EOS]`` by default (CLIP pools at [EOS], decoders start at [BOS]); pass
``add_cls=True, add_sep=True, add_bos=False, add_eos=False`` for BERT-style encoders.

Real-format loaders (images are PIL images unless a ``transform`` is given, e.g.
``image_transform(64)``)::

    CocoCaptions(annotation_json, image_dir)     (image, [captions]) per image
    ImageFolderClassification(root)              (image, class id), classes = sorted subfolders
    LlavaConversations(json_path, image_dir)     {"id", "image", "conversations"} per record

They check the whole file when constructed; anything malformed raises ValueError naming the file,
the record and what is wrong.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from minivlm.data.shapes import (
    ANSWERS,
    CHAT_ROLES,
    NEGATIVE_KINDS,
    QTYPES,
    ShapesData,
    pixel_values,
)
from minivlm.data.tokenizer import IMAGE

__all__ = [
    "IGNORE_INDEX",
    "CaptionDataset",
    "ITMDataset",
    "ClassificationDataset",
    "VQADataset",
    "DialogueDataset",
    "ImageTextCollator",
    "encode_chat",
    "make_loader",
    "move_to",
    "CocoCaptions",
    "ImageFolderClassification",
    "LlavaConversations",
    "image_transform",
    "load_image",
]

IGNORE_INDEX = -100  # label value that cross-entropy skips (torch's default ignore_index)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


# ---------------------------------------------------------------------------- helpers
def make_loader(
    dataset: Dataset,
    batch_size: int = 64,
    shuffle: bool = True,
    seed: int = 0,
    drop_last: bool = False,
    num_workers: int = 0,
) -> DataLoader:
    """A DataLoader using ``dataset.collate`` (when it has one) and a seeded shuffle."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        drop_last=drop_last,
        num_workers=num_workers,
        collate_fn=getattr(dataset, "collate", None),
        generator=torch.Generator().manual_seed(seed),
    )


def move_to(batch: dict[str, Any], device: torch.device | str) -> dict[str, Any]:
    """Move every tensor of a batch dict to ``device`` (other values are kept as they are)."""
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


class _TextOptions:
    """Tokenizer settings shared by the text datasets."""

    def __init__(
        self,
        tokenizer: Any,
        max_length: int | None,
        add_bos: bool,
        add_eos: bool,
        add_cls: bool,
        add_sep: bool,
    ) -> None:
        if not callable(tokenizer) or not hasattr(tokenizer, "encode"):
            raise TypeError(
                f"expected a Tokenizer (minivlm.data.tokenizer), got {type(tokenizer).__name__}"
            )
        self.tokenizer = tokenizer
        self.text_kwargs = dict(
            max_length=max_length,
            add_bos=add_bos,
            add_eos=add_eos,
            add_cls=add_cls,
            add_sep=add_sep,
        )

    def _tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        return self.tokenizer(list(texts), padding=True, truncation=True, **self.text_kwargs)


def _check_data(data: Any) -> ShapesData:
    if not isinstance(data, ShapesData):
        raise TypeError(
            f"expected ShapesData (ShapesWorld().generate(...)), got {type(data).__name__}"
        )
    return data


class _ShapesTextDataset(Dataset, _TextOptions):
    def __init__(self, data: ShapesData, tokenizer: Any, seed: int, **text: Any) -> None:
        _TextOptions.__init__(self, tokenizer, **text)
        self.data = _check_data(data)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Random choices (caption, negative kind) are a function of (seed, epoch, index)."""
        self.epoch = int(epoch)

    def _rng(self, i: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, i])

    def _image(self, i: int) -> torch.Tensor:
        return pixel_values(self.data.images[i])  # (3, H, W)


# ---------------------------------------------------------------------------- shapes datasets
class CaptionDataset(_ShapesTextDataset):
    """Image-caption pairs.

    ``mode``: "fixed" = the canonical ``caption(i)``; "random" = one of ``captions(i)`` drawn
    from (seed, epoch, i) (call ``set_epoch``); "all" = one item per (image, caption) pair.
    Batch: pixel_values, input_ids, attention_mask, index.
    """

    def __init__(
        self,
        data: ShapesData,
        tokenizer: Any,
        mode: str = "fixed",
        seed: int = 0,
        max_length: int | None = None,
        add_bos: bool = True,
        add_eos: bool = True,
        add_cls: bool = False,
        add_sep: bool = False,
    ) -> None:
        super().__init__(
            data,
            tokenizer,
            seed,
            max_length=max_length,
            add_bos=add_bos,
            add_eos=add_eos,
            add_cls=add_cls,
            add_sep=add_sep,
        )
        if mode not in ("fixed", "random", "all"):
            raise ValueError(f'mode must be "fixed", "random" or "all", got {mode!r}')
        self.mode = mode
        self.pairs: list[tuple[int, str]] | None = None
        if mode == "all":
            self.pairs = [(i, c) for i in range(len(data)) for c in data.captions(i)]

    def __len__(self) -> int:
        return len(self.pairs) if self.pairs is not None else len(self.data)

    def text(self, k: int) -> str:
        if self.pairs is not None:
            return self.pairs[k][1]
        if self.mode == "fixed":
            return self.data.caption(k)
        caps = self.data.captions(k)
        return caps[int(self._rng(k).integers(len(caps)))]

    def __getitem__(self, k: int) -> dict[str, Any]:
        i = self.pairs[k][0] if self.pairs is not None else k
        return {"pixel_values": self._image(i), "text": self.text(k), "index": i}

    def collate(self, items: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = self._tokenize([it["text"] for it in items])
        batch["pixel_values"] = torch.stack([it["pixel_values"] for it in items])
        batch["index"] = torch.tensor([it["index"] for it in items], dtype=torch.long)
        return batch


class ITMDataset(_ShapesTextDataset):
    """Image-text matching with hard negatives: item 2k is a true caption of image k
    (``itm_labels`` 1), item 2k+1 the hard negative made from it (``itm_labels`` 0).

    The kind (one of ``kinds``, default all ``NEGATIVE_KINDS``) is drawn per (seed, epoch, k)
    among those that apply to the image; images where none applies are skipped.
    Batch: pixel_values, input_ids, attention_mask, itm_labels (B,), kind (B,) (index in
    ``NEGATIVE_KINDS``), index (B,).
    """

    def __init__(
        self,
        data: ShapesData,
        tokenizer: Any,
        kinds: Sequence[str] | None = None,
        seed: int = 0,
        max_length: int | None = None,
        add_bos: bool = True,
        add_eos: bool = True,
        add_cls: bool = False,
        add_sep: bool = False,
    ) -> None:
        super().__init__(
            data,
            tokenizer,
            seed,
            max_length=max_length,
            add_bos=add_bos,
            add_eos=add_eos,
            add_cls=add_cls,
            add_sep=add_sep,
        )
        kinds = list(NEGATIVE_KINDS) if kinds is None else list(kinds)
        bad = [k for k in kinds if k not in NEGATIVE_KINDS]
        if bad or not kinds:
            raise ValueError(f"kinds must be a non-empty subset of {NEGATIVE_KINDS}, got {kinds}")
        self.kinds = kinds
        self.images = [i for i in range(len(data)) if set(data.hard_negatives(i)) & set(kinds)]

    def __len__(self) -> int:
        return 2 * len(self.images)

    def __getitem__(self, k: int) -> dict[str, Any]:
        if not 0 <= k < len(self):
            raise IndexError(k)
        i = self.images[k // 2]
        negs = self.data.hard_negatives(i)
        options = [kind for kind in self.kinds if kind in negs]
        kind = options[int(self._rng(i).integers(len(options)))]
        positive, negative = negs[kind]
        match = k % 2 == 0
        return {
            "pixel_values": self._image(i),
            "text": positive if match else negative,
            "itm_label": int(match),
            "kind": NEGATIVE_KINDS.index(kind),
            "index": i,
        }

    def collate(self, items: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = self._tokenize([it["text"] for it in items])
        batch["pixel_values"] = torch.stack([it["pixel_values"] for it in items])
        for key, out in (("itm_label", "itm_labels"), ("kind", "kind"), ("index", "index")):
            batch[out] = torch.tensor([it[key] for it in items], dtype=torch.long)
        return batch


class ClassificationDataset(Dataset):
    """Image -> class id for ``task`` in "shape", "color", "size", "count" (see
    ``ShapesData.labels``). Batch: pixel_values, labels (B,), index (B,)."""

    def __init__(self, data: ShapesData, task: str = "shape") -> None:
        self.data = _check_data(data)
        self.task = task
        self.targets = data.labels(task)  # (N,)
        self.class_names = data.class_names(task)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {
            "pixel_values": pixel_values(self.data.images[i]),
            "labels": int(self.targets[i]),
            "index": i,
        }

    def collate(self, items: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        return {
            "pixel_values": torch.stack([it["pixel_values"] for it in items]),
            "labels": torch.tensor([it["labels"] for it in items], dtype=torch.long),
            "index": torch.tensor([it["index"] for it in items], dtype=torch.long),
        }


class VQADataset(_ShapesTextDataset):
    """One item per (image, question). ``answer`` indexes ``ANSWERS`` (== ``answer_vocab``).

    ``qtypes`` keeps only some question types (default all ``QTYPES``).
    Batch: pixel_values, input_ids, attention_mask (the question), answer (B,), qtype (B,)
    (index in ``QTYPES``), index (B,).
    """

    def __init__(
        self,
        data: ShapesData,
        tokenizer: Any,
        qtypes: Sequence[str] | None = None,
        max_length: int | None = None,
        add_bos: bool = True,
        add_eos: bool = True,
        add_cls: bool = False,
        add_sep: bool = False,
    ) -> None:
        super().__init__(
            data,
            tokenizer,
            0,
            max_length=max_length,
            add_bos=add_bos,
            add_eos=add_eos,
            add_cls=add_cls,
            add_sep=add_sep,
        )
        qtypes = list(QTYPES) if qtypes is None else list(qtypes)
        bad = [q for q in qtypes if q not in QTYPES]
        if bad or not qtypes:
            raise ValueError(f"qtypes must be a non-empty subset of {QTYPES}, got {qtypes}")
        self.answer_vocab = list(ANSWERS)
        index = {a: j for j, a in enumerate(self.answer_vocab)}
        self.items: list[tuple[int, str, int, int]] = [
            (i, q, index[a], QTYPES.index(t))
            for i in range(len(data))
            for q, a, t in data.vqa(i)
            if t in qtypes
        ]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, k: int) -> dict[str, Any]:
        i, q, a, t = self.items[k]
        return {"pixel_values": self._image(i), "text": q, "answer": a, "qtype": t, "index": i}

    def collate(self, items: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = self._tokenize([it["text"] for it in items])
        batch["pixel_values"] = torch.stack([it["pixel_values"] for it in items])
        for key in ("answer", "qtype", "index"):
            batch[key] = torch.tensor([it[key] for it in items], dtype=torch.long)
        return batch


def encode_chat(
    tokenizer: Any,
    turns: Sequence[dict[str, str]],
    num_image_tokens: int = 1,
    add_generation_prompt: bool = False,
) -> dict[str, list[int]]:
    """Turn LLaVA-style turns into ids and next-token labels (loss on the assistant only).

    Format (one line per turn)::

        [BOS] user: <image>*num_image_tokens\\nwhat is this?\\nassistant: a red circle.[EOS]
        user: ...\\nassistant: ...[EOS]

    ``labels`` equal ``input_ids`` on the assistant's answers and their [EOS], and
    ``IGNORE_INDEX`` elsewhere. Shift them inside the model as usual for a causal LM.
    ``add_generation_prompt`` ends with "assistant:" for generation (the last turn must be
    human's).
    """
    if num_image_tokens < 1:
        raise ValueError(f"num_image_tokens must be >= 1, got {num_image_tokens}")
    if tokenizer.bos_id is None or tokenizer.eos_id is None:
        raise ValueError("encode_chat needs a tokenizer with bos and eos tokens")
    ids, labels = [tokenizer.bos_id], [IGNORE_INDEX]
    for k, turn in enumerate(turns):
        if not isinstance(turn, dict) or turn.get("from") not in CHAT_ROLES:
            raise ValueError(
                f"turn {k}: expected {{'from': 'human'|'gpt', 'value': str}}, got {turn!r}"
            )
        role, value = turn["from"], turn.get("value")
        if not isinstance(value, str):
            raise ValueError(f"turn {k}: 'value' must be a str, got {type(value).__name__}")
        if role == "human":
            seg = []
            for j, piece in enumerate(value.split(IMAGE)):
                if j > 0:
                    if tokenizer.image_id is None:
                        raise ValueError("the tokenizer has no <image> token")
                    seg += [tokenizer.image_id] * num_image_tokens
                seg += tokenizer.encode(piece)
            seg = tokenizer.encode(f"{CHAT_ROLES['human']}:") + seg + tokenizer.encode("\n")
            ids += seg
            labels += [IGNORE_INDEX] * len(seg)
        else:
            head = tokenizer.encode(f"{CHAT_ROLES['gpt']}:")
            answer = tokenizer.encode(value) + [tokenizer.eos_id]
            ids += head + answer
            labels += [IGNORE_INDEX] * len(head) + answer
    if add_generation_prompt:
        if not turns or turns[-1]["from"] != "human":
            raise ValueError("add_generation_prompt needs the last turn to be the human's")
        head = tokenizer.encode(f"{CHAT_ROLES['gpt']}:")
        ids += head
        labels += [IGNORE_INDEX] * len(head)
    return {"input_ids": ids, "labels": labels}


class DialogueDataset(_ShapesTextDataset):
    """LLaVA-style instruction data: one conversation per image (``ShapesData.dialogue``).

    Each ``<image>`` becomes ``num_image_tokens`` copies of the tokenizer's ``image_id`` (one per
    image feature, as current HF LLaVA processors do). ``task`` fixes the dialogue task (default:
    per image, from its seed). Batch: pixel_values, input_ids, attention_mask, labels (B, T)
    (``IGNORE_INDEX`` outside the assistant's answers and on padding), index.
    Truncation to ``max_length`` cuts from the right.
    """

    def __init__(
        self,
        data: ShapesData,
        tokenizer: Any,
        task: str | None = None,
        num_image_tokens: int = 1,
        max_length: int | None = None,
    ) -> None:
        super().__init__(
            data,
            tokenizer,
            0,
            max_length=max_length,
            add_bos=False,
            add_eos=False,
            add_cls=False,
            add_sep=False,
        )
        self.task = task
        self.num_image_tokens = num_image_tokens
        self.max_length = max_length
        if task is not None:
            data.dialogue(0, task)  # validates the task name early

    def __len__(self) -> int:
        return len(self.data)

    def conversation(self, i: int) -> list[dict[str, str]]:
        return self.data.dialogue(i, self.task)

    def __getitem__(self, i: int) -> dict[str, Any]:
        enc = encode_chat(self.tokenizer, self.conversation(i), self.num_image_tokens)
        if self.max_length is not None:
            enc = {k: v[: self.max_length] for k, v in enc.items()}
        return {"pixel_values": self._image(i), **enc, "index": i}

    def collate(self, items: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = self.tokenizer.pad([it["input_ids"] for it in items])
        batch["labels"] = self.tokenizer.pad(
            [it["labels"] for it in items], pad_value=IGNORE_INDEX
        )["input_ids"]
        batch["pixel_values"] = torch.stack([it["pixel_values"] for it in items])
        batch["index"] = torch.tensor([it["index"] for it in items], dtype=torch.long)
        return batch


class ImageTextCollator(_TextOptions):
    """Collate (image_tensor, text) pairs from any loader, e.g. ``CocoCaptions`` with
    ``transform=image_transform(64)``. A list of captions uses its first one.
    Batch: pixel_values, input_ids, attention_mask."""

    def __init__(
        self,
        tokenizer: Any,
        max_length: int | None = None,
        add_bos: bool = True,
        add_eos: bool = True,
        add_cls: bool = False,
        add_sep: bool = False,
    ) -> None:
        super().__init__(tokenizer, max_length, add_bos, add_eos, add_cls, add_sep)

    def __call__(self, items: Sequence[Any]) -> dict[str, torch.Tensor]:
        images, texts = [], []
        for k, it in enumerate(items):
            image, text = (it["pixel_values"], it["text"]) if isinstance(it, dict) else it
            if not isinstance(image, torch.Tensor):
                raise TypeError(
                    f"item {k}: image is {type(image).__name__}, not a tensor; give the loader "
                    "transform=image_transform(size)"
                )
            if isinstance(text, (list, tuple)):
                if not text:
                    raise ValueError(f"item {k} has no caption")
                text = text[0]
            images.append(image)
            texts.append(text)
        batch = self._tokenize(texts)
        batch["pixel_values"] = torch.stack(images)
        return batch


# ---------------------------------------------------------------------------- real formats
def image_transform(image_size: int = 64) -> Callable[[Any], torch.Tensor]:
    """PIL image -> normalised (3, S, S) float tensor: RGB, shorter side resized to S
    (bicubic), centre crop, then ``pixel_values``."""
    from PIL import Image

    def transform(image: Any) -> torch.Tensor:
        image = image.convert("RGB")
        w, h = image.size
        scale = image_size / min(w, h)
        nw, nh = max(image_size, round(w * scale)), max(image_size, round(h * scale))
        image = image.resize((nw, nh), Image.Resampling.BICUBIC)
        left, top = (nw - image_size) // 2, (nh - image_size) // 2
        image = image.crop((left, top, left + image_size, top + image_size))
        array = np.asarray(image, dtype=np.uint8).copy()  # (S, S, 3)
        return pixel_values(torch.from_numpy(array).permute(2, 0, 1))

    return transform


def load_image(path: str | os.PathLike, where: str = "") -> Any:
    """Open an image as RGB PIL image; unreadable files raise ValueError naming them."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except FileNotFoundError:
        raise ValueError(f"{where}image file not found: {path}") from None
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"{where}cannot read image {path}: {e}") from None


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path}")
    try:
        text = path.read_text("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e})") from None
    if path.suffix == ".jsonl":
        records = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(
                        f"{path}: invalid JSON at line {n}, column {e.colno}: {e.msg}"
                    ) from None
        return records
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(
            f"{path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}"
        ) from None


def _record_name(kind: str, index: int, record: Any, key: str = "id") -> str:
    rid = record.get(key) if isinstance(record, dict) else None
    return f"{kind}[{index}]" + (f" (id={rid!r})" if rid is not None else "")


class CocoCaptions(Dataset):
    """COCO captions: ``{"images": [{"id", "file_name"}, ...], "annotations": [{"image_id",
    "caption"}, ...]}``. Item i: ``(image, captions)`` for the i-th listed image (captions in
    file order; an image without annotations has an empty list)."""

    def __init__(
        self,
        annotation_json: str | os.PathLike,
        image_dir: str | os.PathLike,
        transform: Callable[[Any], Any] | None = None,
    ) -> None:
        self.path = Path(annotation_json)
        self.image_dir = Path(image_dir)
        self.transform = transform
        data = _read_json(self.path)
        p = self.path
        if not isinstance(data, dict):
            raise ValueError(
                f"{p}: expected a JSON object with 'images' and 'annotations', "
                f"got {type(data).__name__}"
            )
        for key in ("images", "annotations"):
            if key not in data:
                raise ValueError(f"{p}: missing top-level key {key!r}")
            if not isinstance(data[key], list):
                raise ValueError(f"{p}: {key!r} must be a list, got {type(data[key]).__name__}")
        self.ids: list[int | str] = []
        self.files: list[Path] = []
        self.captions: list[list[str]] = []
        position: dict[int | str, int] = {}
        for k, rec in enumerate(data["images"]):
            name = _record_name("images", k, rec)
            if not isinstance(rec, dict):
                raise ValueError(f"{p}: {name} must be an object, got {type(rec).__name__}")
            for key in ("id", "file_name"):
                if key not in rec:
                    raise ValueError(f"{p}: {name} is missing {key!r}")
            if not isinstance(rec["id"], (int, str)) or isinstance(rec["id"], bool):
                raise ValueError(f"{p}: {name}: 'id' must be an int or str")
            if not isinstance(rec["file_name"], str):
                raise ValueError(f"{p}: {name}: 'file_name' must be a str")
            if rec["id"] in position:
                raise ValueError(f"{p}: {name}: duplicate image id")
            file = self.image_dir / rec["file_name"]
            if not file.is_file():
                raise ValueError(f"{p}: {name}: image file not found: {file}")
            position[rec["id"]] = len(self.ids)
            self.ids.append(rec["id"])
            self.files.append(file)
            self.captions.append([])
        for k, ann in enumerate(data["annotations"]):
            name = _record_name("annotations", k, ann)
            if not isinstance(ann, dict):
                raise ValueError(f"{p}: {name} must be an object, got {type(ann).__name__}")
            for key in ("image_id", "caption"):
                if key not in ann:
                    raise ValueError(f"{p}: {name} is missing {key!r}")
            if not isinstance(ann["caption"], str):
                raise ValueError(
                    f"{p}: {name}: 'caption' must be a str, got {type(ann['caption']).__name__}"
                )
            if ann["image_id"] not in position:
                raise ValueError(f"{p}: {name}: image_id {ann['image_id']!r} is not in 'images'")
            self.captions[position[ann["image_id"]]].append(ann["caption"])

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> tuple[Any, list[str]]:
        image = load_image(self.files[i], f"{self.path}: image id={self.ids[i]!r}: ")
        if self.transform is not None:
            image = self.transform(image)
        return image, list(self.captions[i])


class ImageFolderClassification(Dataset):
    """``root/<class name>/**/<image>``: classes are the sorted subfolder names.
    Item i: ``(image, class id)``; ``classes``, ``class_to_idx``, ``samples``, ``targets``."""

    def __init__(
        self,
        root: str | os.PathLike,
        transform: Callable[[Any], Any] | None = None,
        extensions: Sequence[str] = IMAGE_EXTENSIONS,
    ) -> None:
        self.root = Path(root)
        self.transform = transform
        if not self.root.exists():
            raise FileNotFoundError(f"image folder not found: {self.root}")
        if not self.root.is_dir():
            raise ValueError(f"{self.root}: expected a folder with one subfolder per class")
        self.classes = sorted(
            d.name for d in self.root.iterdir() if d.is_dir() and not d.name.startswith(".")
        )
        if not self.classes:
            raise ValueError(f"{self.root}: no class subfolders (expected root/<class>/<image>)")
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        exts = tuple(e.lower() for e in extensions)
        self.samples: list[tuple[Path, int]] = []
        for c in self.classes:
            files = sorted(
                f for f in (self.root / c).rglob("*") if f.is_file() and f.suffix.lower() in exts
            )
            if not files:
                raise ValueError(f"{self.root}: class folder {c!r} holds no images ({exts})")
            self.samples += [(f, self.class_to_idx[c]) for f in files]
        self.targets = [t for _, t in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        path, target = self.samples[i]
        image = load_image(path, f"{self.root}: sample {i}: ")
        if self.transform is not None:
            image = self.transform(image)
        return image, target


class LlavaConversations(Dataset):
    """LLaVA instruction data: a JSON list (or .jsonl) of ``{"id", "image"?, "conversations":
    [{"from": "human"|"gpt"|"system", "value": str}, ...]}``.

    Image paths are relative to ``image_dir`` (default: the JSON file's folder). Item i:
    ``{"id", "image" (PIL, transformed, or None for text-only records), "conversations"}``.
    """

    ROLES = ("human", "gpt", "system")

    def __init__(
        self,
        json_path: str | os.PathLike,
        image_dir: str | os.PathLike | None = None,
        transform: Callable[[Any], Any] | None = None,
    ) -> None:
        self.path = Path(json_path)
        self.image_dir = Path(image_dir) if image_dir is not None else self.path.parent
        self.transform = transform
        data = _read_json(self.path)
        p = self.path
        if not isinstance(data, list):
            raise ValueError(f"{p}: expected a JSON list of records, got {type(data).__name__}")
        self.records: list[dict[str, Any]] = []
        for k, rec in enumerate(data):
            name = _record_name("record", k, rec)
            if not isinstance(rec, dict):
                raise ValueError(f"{p}: {name} must be an object, got {type(rec).__name__}")
            for key in ("id", "conversations"):
                if key not in rec:
                    raise ValueError(f"{p}: {name} is missing {key!r}")
            conv = rec["conversations"]
            if not isinstance(conv, list) or not conv:
                raise ValueError(f"{p}: {name}: 'conversations' must be a non-empty list")
            for t, turn in enumerate(conv):
                where = f"{p}: {name}: conversations[{t}]"
                if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
                    raise ValueError(f"{where} must be an object with 'from' and 'value'")
                if turn["from"] not in self.ROLES:
                    raise ValueError(
                        f"{where}: 'from' must be one of {self.ROLES}, got {turn['from']!r}"
                    )
                if not isinstance(turn["value"], str):
                    raise ValueError(
                        f"{where}: 'value' must be a str, got {type(turn['value']).__name__}"
                    )
            uses_image = any(IMAGE in turn["value"] for turn in conv)
            file = None
            if rec.get("image") is not None:
                if not isinstance(rec["image"], str):
                    raise ValueError(f"{p}: {name}: 'image' must be a str path")
                file = self.image_dir / rec["image"]
                if not file.is_file():
                    raise ValueError(f"{p}: {name}: image file not found: {file}")
            elif uses_image:
                raise ValueError(f"{p}: {name}: a turn has {IMAGE} but the record has no 'image'")
            self.records.append({"id": rec["id"], "image": file, "conversations": conv})

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict[str, Any]:
        rec = self.records[i]
        image = None
        if rec["image"] is not None:
            image = load_image(rec["image"], f"{self.path}: record id={rec['id']!r}: ")
            if self.transform is not None:
                image = self.transform(image)
        return {
            "id": rec["id"],
            "image": image,
            "conversations": [dict(t) for t in rec["conversations"]],
        }
