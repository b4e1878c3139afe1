"""Torch datasets: one per training task on the shapes world, and loaders for real formats.

Shapes-world datasets (``data = ShapesWorld().generate(...)``, ``tok = shapes_tokenizer()``)::

    CaptionDataset(data, tok)        image + caption          -> CLIP/ALBEF contrastive, captioning
    ITMDataset(data, tok)            image + caption, 1 if it matches, 0 for a hard negative
    ClassificationDataset(data, "shape")   image + class id   -> linear probes, zero-shot
    VQADataset(data, tok)            image + question + answer id (index in ``ANSWERS``)
    DialogueDataset(data, tok)       LLaVA-style chat (in ``minivlm.data.chat``)

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

Real-format loaders live in ``minivlm.data.formats`` (images are PIL images unless a
``transform`` is given, e.g. ``image_transform(64)``)::

    CocoCaptions(annotation_json, image_dir)     (image, [captions]) per image
    ImageFolderClassification(root)              (image, class id), classes = sorted subfolders
    LlavaConversations(json_path, image_dir)     {"id", "image", "conversations"} per record

They check the whole file when constructed; anything malformed raises ValueError naming the file,
the record and what is wrong.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from minivlm.data.shapes import (
    ANSWERS,
    NEGATIVE_KINDS,
    QTYPES,
    ShapesData,
    pixel_values,
)

__all__ = [
    "IGNORE_INDEX",
    "CaptionDataset",
    "ITMDataset",
    "ClassificationDataset",
    "VQADataset",
    "ImageTextCollator",
    "make_loader",
    "move_to",
]

IGNORE_INDEX = -100  # label value that cross-entropy skips (torch's default ignore_index)


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


class ShapesTextDataset(Dataset, _TextOptions):
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
class CaptionDataset(ShapesTextDataset):
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


class ITMDataset(ShapesTextDataset):
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


class VQADataset(ShapesTextDataset):
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
