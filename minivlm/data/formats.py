"""Loaders for real data formats (tested on small files the tests write; nothing is
downloaded). Images are PIL images unless a ``transform`` is given, e.g.
``image_transform(64)``::

    CocoCaptions(annotation_json, image_dir)     (image, [captions]) per image
    ImageFolderClassification(root)              (image, class id), classes = sorted subfolders
    LlavaConversations(json_path, image_dir)     {"id", "image", "conversations"} per record

They check the whole file when constructed; anything malformed raises ValueError naming the file,
the record and what is wrong. Batch them with ``ImageTextCollator`` (captions) or
``minivlm.data.chat.LlavaCollator`` (conversations).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from minivlm.data.shapes import pixel_values
from minivlm.data.tokenizer import IMAGE

__all__ = [
    "CocoCaptions",
    "ImageFolderClassification",
    "LlavaConversations",
    "image_transform",
    "load_image",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


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


def _checked_record(path: Path, kind: str, index: int, record: Any, keys: tuple[str, ...]) -> str:
    """The record's name for messages (``images[3] (id=7)``) once it is a JSON object with
    every one of ``keys``; a ValueError naming the file and the record otherwise."""
    name = _record_name(kind, index, record)
    if not isinstance(record, dict):
        raise ValueError(f"{path}: {name} must be an object, got {type(record).__name__}")
    for key in keys:
        if key not in record:
            raise ValueError(f"{path}: {name} is missing {key!r}")
    return name


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
            name = _checked_record(p, "images", k, rec, ("id", "file_name"))
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
            name = _checked_record(p, "annotations", k, ann, ("image_id", "caption"))
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
            name = _checked_record(p, "record", k, rec, ("id", "conversations"))
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
