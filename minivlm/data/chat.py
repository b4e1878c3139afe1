"""Chat data: dialogues -> token ids and next-token labels (loss on the assistant's answers
only), and the collators that batch them.

Two formats, both as LLaVA trains (Liu et al. 2023, §4.2, Table 2):

* :func:`encode_chat` / :class:`DialogueDataset`: the shapes world's own plain format,
  ``[BOS] user: <image>...\\nquestion\\nassistant: answer[EOS]`` (words the shapes tokenizer has);
* :class:`ChatTemplate` (LLaVA's Vicuna-v1 ``USER: ... ASSISTANT: ...``; ``VICUNA_V1`` with its
  system prompt, ``SHAPES_CHAT`` without) and :class:`LlavaCollator`, which batches
  ``{"conversations", "image"}`` items such as ``LlavaConversations`` records.

Each ``<image>`` becomes ``num_image_tokens`` copies of the tokenizer's ``image_id``, as current
Hugging Face LLaVA processors do; :func:`expand_image_tokens` does the same to prompts already
tokenised with one ``<image>`` each.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from minivlm.data.datasets import IGNORE_INDEX, ShapesTextDataset
from minivlm.data.shapes import CHAT_ROLES, ShapesData
from minivlm.data.tokenizer import IMAGE

Tensor = torch.Tensor

__all__ = [
    "IMAGE_TOKEN_ID",
    "SHAPES_CHAT",
    "VICUNA_V1",
    "ChatTemplate",
    "DialogueDataset",
    "LlavaCollator",
    "encode_chat",
    "expand_image_tokens",
]

IMAGE_TOKEN_ID = 7  # <image> in minivlm.data.tokenizer (SPECIAL_TOKENS[7])


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


class DialogueDataset(ShapesTextDataset):
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
        super().__init__(data, tokenizer, 0, max_length=max_length, add_bos=False, add_eos=False)
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

    def collate(self, items: Sequence[dict[str, Any]]) -> dict[str, torch.torch.Tensor]:
        batch = self.tokenizer.pad([it["input_ids"] for it in items])
        batch["labels"] = self.tokenizer.pad(
            [it["labels"] for it in items], pad_value=IGNORE_INDEX
        )["input_ids"]
        batch["pixel_values"] = torch.stack([it["pixel_values"] for it in items])
        batch["index"] = torch.tensor([it["index"] for it in items], dtype=torch.long)
        return batch


# ---------------------------------------------------------------------------
# Chat template: dialogue -> input_ids + labels (loss on the assistant only)
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ChatTemplate:
    """A Vicuna-v1 style conversation format (LLaVA's ``conv_vicuna_v1``)::

        [BOS] {system} USER: <image>\\n{question} ASSISTANT: {answer}[EOS]
        USER: {question} ASSISTANT: {answer}[EOS] ...     (no line break between turns)

    Only the answers and their [EOS] are learned; the system prompt, the user turns and the
    "ASSISTANT:" prefix get label -100. Each piece is tokenized on its own (exact for the
    word-level shapes tokenizer; sub-word tokenizers may split a little differently than on
    the joined string).
    """

    system: str = ""
    user: str = "USER"
    assistant: str = "ASSISTANT"

    def render(
        self,
        turns: Sequence[dict[str, str]],
        add_generation_prompt: bool = False,
        eos: str = "</s>",
    ) -> str:
        """The prompt as one string (for reading; :meth:`encode` is what the model sees)."""
        system, turns = _split_system(turns, self.system)
        out = f"{system} " if system else ""
        for turn in turns:
            if turn["from"] == "human":
                out += f"{self.user}: {turn['value']} "
            else:
                out += f"{self.assistant}: {turn['value']}{eos}"
        return out + (f"{self.assistant}:" if add_generation_prompt else "")

    def encode(
        self,
        tokenizer: Any,
        turns: Sequence[dict[str, str]],
        num_image_tokens: int = 1,
        add_generation_prompt: bool = False,
    ) -> dict[str, list[int]]:
        """Dialogue -> ``{"input_ids": [...], "labels": [...]}`` (lists of equal length).

        turns: ``[{"from": "human"|"gpt", "value": str}, ...]`` (an optional first "system"
        turn replaces the template's system prompt), alternating and starting with "human".
        Each ``<image>`` becomes ``num_image_tokens`` copies of ``tokenizer.image_id``.
        ``add_generation_prompt`` ends with "ASSISTANT:" (the last turn must be human's).
        """
        if num_image_tokens < 1:
            raise ValueError(
                f"ChatTemplate.encode: num_image_tokens must be >= 1, got {num_image_tokens}"
            )
        if tokenizer.bos_id is None or tokenizer.eos_id is None:
            raise ValueError("ChatTemplate.encode: the tokenizer needs bos and eos tokens")
        system, turns = _split_system(turns, self.system)
        if add_generation_prompt and (not turns or turns[-1]["from"] != "human"):
            raise ValueError(
                "ChatTemplate.encode: add_generation_prompt needs the last turn to be the human's"
            )
        ids = [tokenizer.bos_id] + (tokenizer.encode(system) if system else [])
        labels = [IGNORE_INDEX] * len(ids)
        for turn in turns:
            if turn["from"] == "human":
                seg = tokenizer.encode(f"{self.user}:")
                for j, piece in enumerate(turn["value"].split(IMAGE)):
                    if j:
                        if getattr(tokenizer, "image_id", None) is None:
                            raise ValueError(
                                "ChatTemplate.encode: the dialogue has <image> but "
                                "the tokenizer has no image token"
                            )
                        seg += [tokenizer.image_id] * num_image_tokens
                    seg += tokenizer.encode(piece)
                ids += seg
                labels += [IGNORE_INDEX] * len(seg)
            else:
                head = tokenizer.encode(f"{self.assistant}:")
                answer = tokenizer.encode(turn["value"]) + [tokenizer.eos_id]
                ids += head + answer
                labels += [IGNORE_INDEX] * len(head) + answer
        if add_generation_prompt:
            head = tokenizer.encode(f"{self.assistant}:")
            ids += head
            labels += [IGNORE_INDEX] * len(head)
        return {"input_ids": ids, "labels": labels}


def _split_system(
    turns: Sequence[dict[str, str]], default: str
) -> tuple[str, list[dict[str, str]]]:
    """Check the turns; return (system prompt, the human/gpt turns)."""
    if isinstance(turns, (str, dict)) or not isinstance(turns, Sequence):
        raise TypeError(f"expected a list of turns {{'from', 'value'}}, got {type(turns).__name__}")
    turns = list(turns)
    for k, t in enumerate(turns):
        if (
            not isinstance(t, dict)
            or t.get("from") not in ("human", "gpt", "system")
            or not isinstance(t.get("value"), str)
        ):
            raise ValueError(
                f"turn {k}: expected {{'from': 'human'|'gpt'|'system', 'value': str}}, got {t!r}"
            )
    system = default
    if turns and turns[0]["from"] == "system":
        system, turns = turns[0]["value"], turns[1:]
    for k, t in enumerate(turns):
        want = "human" if k % 2 == 0 else "gpt"
        if t["from"] != want:
            raise ValueError(
                f"turn {k}: expected a '{want}' turn (turns alternate human, gpt, "
                f"starting with human), got {t['from']!r}"
            )
    return system, turns


# LLaVA's Vicuna-v1 template, with its system prompt (for sub-word tokenizers).
VICUNA_V1 = ChatTemplate(
    system="A chat between a curious user and an artificial intelligence assistant. The "
    "assistant gives helpful, detailed, and polite answers to the user's questions."
)
# The shapes world's vocabulary has no words for a system prompt: the same format without one.
SHAPES_CHAT = ChatTemplate()


class LlavaCollator:
    """Batch dialogues for training: ``collate(items) -> {pixel_values, input_ids,
    attention_mask, labels}``, right-padded (labels -100 on padding).

    Each item is a dict with ``conversations`` (or ``turns``), the dialogue, and
    ``pixel_values`` (or ``image``), a (C, H, W) tensor, e.g. ``LlavaConversations`` items with
    ``transform=image_transform(S)``; an image of None is a text-only dialogue (then
    ``pixel_values`` holds only the other rows' images, in order). ``num_image_tokens`` is
    the model's N (``model.num_image_tokens``). ``max_length`` truncates from the right, but
    never inside the image tokens (that raises ValueError).
    """

    def __init__(
        self,
        tokenizer: Any,
        num_image_tokens: int,
        template: ChatTemplate = SHAPES_CHAT,
        max_length: int | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.num_image_tokens = num_image_tokens
        self.template = template
        self.max_length = max_length

    def encode(self, turns: Sequence[dict[str, str]]) -> dict[str, list[int]]:
        enc = self.template.encode(self.tokenizer, turns, self.num_image_tokens)
        if self.max_length is not None and len(enc["input_ids"]) > self.max_length:
            image_id = getattr(self.tokenizer, "image_id", None)
            n_before = enc["input_ids"].count(image_id)
            enc = {k: v[: self.max_length] for k, v in enc.items()}
            if enc["input_ids"].count(image_id) != n_before:
                raise ValueError(
                    f"LlavaCollator: max_length={self.max_length} cuts into the "
                    f"{n_before} image tokens; raise max_length"
                )
        return enc

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        encs, images = [], []
        for k, it in enumerate(items):
            turns = it.get("conversations", it.get("turns"))
            image = it.get("pixel_values", it.get("image"))
            if turns is None:
                raise ValueError(f"LlavaCollator: item {k} has no 'conversations'")
            enc = self.encode(turns)
            if image is None:  # a text-only dialogue (LLaVA mixes some in): no image tokens
                if getattr(self.tokenizer, "image_id", None) in enc["input_ids"]:
                    raise ValueError(f"LlavaCollator: item {k} has <image> but no image")
            elif not isinstance(image, torch.Tensor):
                raise TypeError(
                    f"LlavaCollator: item {k}: expected a (C, H, W) image tensor in "
                    f"'pixel_values' or 'image', got {type(image).__name__} (give "
                    "the dataset transform=image_transform(size))"
                )
            else:
                images.append(image)
            encs.append(enc)
        batch = self.tokenizer.pad([e["input_ids"] for e in encs])
        labels = self.tokenizer.pad([e["labels"] for e in encs], pad_value=IGNORE_INDEX)
        batch["labels"] = labels["input_ids"]
        if images:  # (B_img, C, H, W), B_img <= B: the images of the rows that have one
            batch["pixel_values"] = torch.stack(images)
        return batch


def expand_image_tokens(
    input_ids: Tensor,
    num_image_tokens: int,
    image_token_id: int = IMAGE_TOKEN_ID,
    attention_mask: Tensor | None = None,
    labels: Tensor | None = None,
    pad_id: int = 0,
) -> dict[str, Tensor]:
    """Repeat each single ``<image>`` token ``num_image_tokens`` times (HF-processor style).

    input_ids (B, T) right-padded (``attention_mask`` (B, T) 1/0, default all ones). Returns
    ``input_ids``, ``attention_mask`` and (when given) ``labels`` (B, T'), right-padded with
    ``pad_id`` / 0 / -100; labels at the new image slots are -100.
    """
    if input_ids.dim() != 2:
        raise ValueError(
            f"expand_image_tokens: expected input_ids (B, T), got {tuple(input_ids.shape)}"
        )
    if num_image_tokens < 1:
        raise ValueError(
            f"expand_image_tokens: num_image_tokens must be >= 1, got {num_image_tokens}"
        )
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    for name, t in (("attention_mask", attention_mask), ("labels", labels)):
        if t is not None and t.shape != input_ids.shape:
            raise ValueError(
                f"expand_image_tokens: {name} {tuple(t.shape)} does not match "
                f"input_ids {tuple(input_ids.shape)}"
            )
    rows_ids, rows_lab = [], []
    for r in range(input_ids.shape[0]):
        keep = attention_mask[r].bool()
        ids = input_ids[r][keep]  # (t,) real tokens
        reps = torch.where(ids == image_token_id, num_image_tokens, 1)  # (t,)
        rows_ids.append(ids.repeat_interleave(reps))
        if labels is not None:
            lab = labels[r][keep].masked_fill(ids == image_token_id, IGNORE_INDEX)
            rows_lab.append(lab.repeat_interleave(reps))
    T = max((len(x) for x in rows_ids), default=0)
    B = len(rows_ids)
    out = {
        "input_ids": input_ids.new_full((B, T), pad_id),
        "attention_mask": attention_mask.new_zeros((B, T)),
    }
    if labels is not None:
        out["labels"] = labels.new_full((B, T), IGNORE_INDEX)
    for r, ids in enumerate(rows_ids):
        out["input_ids"][r, : len(ids)] = ids
        out["attention_mask"][r, : len(ids)] = 1
        if labels is not None:
            out["labels"][r, : len(ids)] = rows_lab[r]
    return out
