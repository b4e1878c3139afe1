"""A word-level tokenizer, small enough to read in one sitting.

Real VLMs use sub-word tokenizers (BPE for CLIP and Llama, WordPiece for BERT/ViLT/BLIP). The shapes
world has a closed vocabulary of a hundred-odd words, so one id per word is all it needs, and every
id can be printed and understood.

Text is lower-cased and split into words and single punctuation marks; a newline is a token of its
own (LLaVA prompts put the image on its own line: ``"<image>\\nwhat is this?"``). Special tokens
have fixed ids, the same in every ``Tokenizer``::

    id  token     used for
    0   [PAD]     padding (always id 0; ``attention_mask`` is 0 there)
    1   [UNK]     a word that is not in the vocabulary
    2   [CLS]     BERT-style "summary" token at the start (ViLT, ALBEF, BLIP encoders)
    3   [SEP]     BERT-style end/separator
    4   [MASK]    masked-language-modelling target position
    5   [BOS]     start of a sequence for a causal decoder (CLIP text, captioners, LLMs)
    6   [EOS]     end of a sequence; CLIP pools the text at the first [EOS]
    7   <image>   placeholder the LLaVA-style model replaces by image features

    >>> tok = shapes_tokenizer()
    >>> tok.encode("a red circle.", add_bos=True, add_eos=True)   # [5, ..., 6]
    >>> batch = tok(["a red circle", "two shapes"], add_cls=True)  # input_ids, attention_mask
    >>> tok.decode(batch["input_ids"][0])
    'a red circle'

``HFTokenizerAdapter`` wraps a Hugging Face tokenizer behind the same interface, so the same
training code runs with a real sub-word vocabulary.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from minivlm.utils import atomic_write

__all__ = [
    "SPECIAL_TOKENS",
    "PUNCTUATION",
    "Tokenizer",
    "HFTokenizerAdapter",
    "shapes_tokenizer",
    "split_words",
]

PAD, UNK, CLS, SEP, MASK, BOS, EOS, IMAGE = (
    "[PAD]",
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "[MASK]",
    "[BOS]",
    "[EOS]",
    "<image>",
)
SPECIAL_TOKENS: list[str] = [PAD, UNK, CLS, SEP, MASK, BOS, EOS, IMAGE]  # ids 0..7, fixed
PUNCTUATION: list[str] = ["\n", ",", ".", ":", "?"]  # the marks the shapes-world templates use

_FORMAT = "minivlm.Tokenizer"
_VERSION = 1
# <image> or a bracketed special token, a newline, a run of word characters, or one other mark.
_SPLIT = re.compile(r"<image>|\[(?:pad|unk|cls|sep|mask|bos|eos)\]|\n|\w+|[^\w\s]")
_NO_SPACE_BEFORE = {",", ".", ":", "?", "!", ";", ")", "\n"}
_NO_SPACE_AFTER = {"\n", "("}


def split_words(text: str) -> list[str]:
    """Lower-case ``text`` and split it into words, punctuation marks and newlines.

    >>> split_words("Is there a RED circle?\\n")
    ['is', 'there', 'a', 'red', 'circle', '?', '\\n']
    """
    if not isinstance(text, str):
        raise TypeError(f"expected text as str, got {type(text).__name__}")
    words = _SPLIT.findall(text.lower())
    # special tokens were matched lower-cased; give them back their canonical spelling
    return [w.upper() if w.startswith("[") and w.upper() in SPECIAL_TOKENS else w for w in words]


def _join(tokens: Sequence[str]) -> str:
    """Inverse of ``split_words`` for text made of the tokens: spaces between words only."""
    out: list[str] = []
    for tok in tokens:
        if out and tok not in _NO_SPACE_BEFORE and out[-1] not in _NO_SPACE_AFTER:
            out.append(" ")
        out.append(tok)
    return "".join(out)


def _as_id_list(ids: Any) -> list[int]:
    if isinstance(ids, torch.Tensor):
        if ids.dim() != 1:
            raise ValueError(f"decode expects a 1-D sequence of ids, got shape {tuple(ids.shape)}")
        return [int(i) for i in ids.tolist()]
    return [int(i) for i in ids]


class _TokenizerMixin:
    """Encoding with special tokens, padding and batching shared by ``Tokenizer`` and
    ``HFTokenizerAdapter`` (each supplies ``vocab_size`` and ``_word_ids``)."""

    pad_id: int
    vocab_size: int  # a property of each subclass

    def __len__(self) -> int:
        return self.vocab_size

    def encode(
        self,
        text: str,
        add_bos: bool = False,
        add_eos: bool = False,
        add_cls: bool = False,
        add_sep: bool = False,
        **options: Any,
    ) -> list[int]:
        """Text -> ids: ``[CLS]? [BOS]? words... [EOS]? [SEP]?``. ``options`` go to the word
        lookup (``Tokenizer``: ``strict=True`` raises a ValueError listing every unknown word
        instead of mapping it to [UNK])."""
        prefix, suffix = self._special_ids(add_bos, add_eos, add_cls, add_sep)
        return prefix + self._word_ids(text, **options) + suffix

    def _word_ids(self, text: str) -> list[int]:  # pragma: no cover - overridden
        raise NotImplementedError

    def _special_ids(
        self, add_bos: bool, add_eos: bool, add_cls: bool, add_sep: bool
    ) -> tuple[list[int], list[int]]:
        """Ids put in front of ([CLS], [BOS]) and after ([EOS], [SEP]) the words."""
        prefix, suffix = [], []
        for flag, name in ((add_cls, "cls"), (add_bos, "bos")):
            if flag:
                prefix.append(self._require(name))
        for flag, name in ((add_eos, "eos"), (add_sep, "sep")):
            if flag:
                suffix.append(self._require(name))
        return prefix, suffix

    def _require(self, name: str) -> int:
        value = getattr(self, f"{name}_id")
        if value is None:
            raise ValueError(f"this tokenizer has no {name} token; cannot add_{name}")
        return int(value)

    def pad(
        self,
        sequences: Sequence[Sequence[int]],
        max_length: int | None = None,
        padding: bool | str = True,
        pad_value: int | None = None,
        return_tensors: str | None = "pt",
    ) -> dict[str, Any]:
        """Right-pad lists of ids to a common length.

        ``padding``: True/"longest" pads to the longest sequence, "max_length" to ``max_length``,
        False leaves them (then ``return_tensors="pt"`` needs equal lengths). ``pad_value``
        defaults to ``pad_id`` (use -100 to pad label sequences).
        """
        seqs = [list(s) for s in sequences]
        pad_value = self.pad_id if pad_value is None else pad_value
        if padding in (True, "longest"):
            target = max((len(s) for s in seqs), default=0)
        elif padding == "max_length":
            if max_length is None:
                raise ValueError('padding="max_length" needs max_length')
            target = max_length
        elif padding in (False, "do_not_pad"):
            target = None
        else:
            raise ValueError(
                f'padding must be True, False, "longest" or "max_length", got {padding!r}'
            )
        if target is not None:
            if any(len(s) > target for s in seqs):
                raise ValueError(
                    f"a sequence is longer than max_length={target}; pass truncation=True"
                )
            masks = [[1] * len(s) + [0] * (target - len(s)) for s in seqs]
            seqs = [s + [pad_value] * (target - len(s)) for s in seqs]
        else:
            masks = [[1] * len(s) for s in seqs]
        if return_tensors is None:
            return {"input_ids": seqs, "attention_mask": masks}
        if return_tensors != "pt":
            raise ValueError(f'return_tensors must be "pt" or None, got {return_tensors!r}')
        if len({len(s) for s in seqs}) > 1:
            raise ValueError("sequences have different lengths; use padding=True to return tensors")
        width = len(seqs[0]) if seqs else 0
        return {
            "input_ids": torch.tensor(seqs, dtype=torch.long).reshape(len(seqs), width),
            "attention_mask": torch.tensor(masks, dtype=torch.long).reshape(len(seqs), width),
        }

    def __call__(
        self,
        texts: str | Sequence[str],
        max_length: int | None = None,
        padding: bool | str = True,
        truncation: bool = True,
        add_bos: bool = False,
        add_eos: bool = False,
        add_cls: bool = False,
        add_sep: bool = False,
        return_tensors: str | None = "pt",
    ) -> dict[str, Any]:
        """Tokenize a batch: ``{"input_ids": (B, T) long, "attention_mask": (B, T) long 1/0}``.

        Padding is on the right. With ``truncation`` and ``max_length``, words are dropped from
        the end but the requested special tokens are kept (an [EOS] stays last).
        """
        if isinstance(texts, str):
            texts = [texts]
        prefix, suffix = self._special_ids(add_bos, add_eos, add_cls, add_sep)
        seqs = []
        for text in texts:
            ids = self.encode(text)
            if truncation and max_length is not None:
                room = max_length - len(prefix) - len(suffix)
                if room < 0:
                    raise ValueError(
                        f"max_length={max_length} leaves no room for the "
                        f"{len(prefix) + len(suffix)} special tokens requested"
                    )
                ids = ids[:room]
            seqs.append(prefix + ids + suffix)
        return self.pad(seqs, max_length=max_length, padding=padding, return_tensors=return_tensors)

    def batch_decode(self, sequences: Any, skip_special_tokens: bool = True) -> list[str]:
        """``decode`` each row of a (B, T) tensor or list of id lists."""
        if isinstance(sequences, torch.Tensor):
            if sequences.dim() != 2:
                raise ValueError(
                    f"batch_decode expects a (B, T) tensor, got shape {tuple(sequences.shape)}"
                )
            sequences = sequences.tolist()
        return [self.decode(s, skip_special_tokens=skip_special_tokens) for s in sequences]

    def decode(self, ids: Any, skip_special_tokens: bool = True) -> str:  # pragma: no cover
        raise NotImplementedError


class Tokenizer(_TokenizerMixin):
    """Word-level tokenizer: ids 0..7 are ``SPECIAL_TOKENS``, words follow in the given order.

    Args:
        words: the vocabulary (special tokens in it are skipped; duplicates are an error).
        strict: if True, ``encode`` raises ValueError on an unknown word instead of using [UNK].
    """

    pad_id, unk_id, cls_id, sep_id, mask_id, bos_id, eos_id, image_id = range(8)

    def __init__(self, words: Iterable[str], strict: bool = False) -> None:
        if isinstance(words, str):
            raise TypeError("Tokenizer expects a list of words, got a single str")
        tokens = list(SPECIAL_TOKENS)
        seen = set(tokens)
        for i, w in enumerate(words):
            if not isinstance(w, str) or not w:
                raise TypeError(f"vocabulary entry {i} must be a non-empty str, got {w!r}")
            if w in SPECIAL_TOKENS:
                continue
            if w in seen:
                raise ValueError(f"vocabulary entry {i} ({w!r}) is a duplicate")
            seen.add(w)
            tokens.append(w)
        self.tokens: list[str] = tokens  # id -> token
        self.token_to_id: dict[str, int] = {t: i for i, t in enumerate(tokens)}
        self.strict = strict

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_texts(
        cls,
        texts: Iterable[str],
        min_freq: int = 1,
        max_size: int | None = None,
        extra: Iterable[str] = (),
        strict: bool = False,
    ) -> Tokenizer:
        """Build a vocabulary from the words of ``texts`` (sorted alphabetically).

        Words seen fewer than ``min_freq`` times are dropped; with ``max_size`` only the most
        frequent words are kept (ties broken alphabetically). ``extra`` words are always kept.
        """
        counts: Counter[str] = Counter()
        for text in texts:
            counts.update(w for w in split_words(text) if w not in SPECIAL_TOKENS)
        words = [w for w, c in counts.items() if c >= min_freq]
        if max_size is not None:
            words = sorted(words, key=lambda w: (-counts[w], w))[:max_size]
        words = sorted(set(words) | {w for w in extra if w not in SPECIAL_TOKENS})
        return cls(words, strict=strict)

    # ------------------------------------------------------------------ sizes and lookups
    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, strict={self.strict})"

    @property
    def vocab(self) -> dict[str, int]:
        """token -> id (a copy)."""
        return dict(self.token_to_id)

    @property
    def special_ids(self) -> dict[str, int]:
        return {t: i for i, t in enumerate(SPECIAL_TOKENS)}

    def convert_tokens_to_ids(self, tokens: Sequence[str], strict: bool | None = None) -> list[int]:
        strict = self.strict if strict is None else strict
        if strict:
            unknown = [t for t in dict.fromkeys(tokens) if t not in self.token_to_id]
            if unknown:
                raise ValueError(
                    f"unknown word{'s' if len(unknown) > 1 else ''} "
                    f"{', '.join(map(repr, unknown))}: not in the tokenizer's vocabulary "
                    f"({self.vocab_size} tokens)"
                )
        return [self.token_to_id.get(t, self.unk_id) for t in tokens]

    def unknown_words(self, text: str) -> list[str]:
        """The words of ``text`` outside the vocabulary, each once, in order of appearance."""
        return [w for w in dict.fromkeys(split_words(text)) if w not in self.token_to_id]

    def convert_ids_to_tokens(self, ids: Any) -> list[str]:
        out = []
        for i in _as_id_list(ids):
            if not 0 <= i < len(self.tokens):
                raise ValueError(f"id {i} is outside the vocabulary (size {len(self.tokens)})")
            out.append(self.tokens[i])
        return out

    def tokenize(self, text: str) -> list[str]:
        """The word strings ``encode`` would look up."""
        return split_words(text)

    # ------------------------------------------------------------------ encode / decode
    def _word_ids(self, text: str, strict: bool | None = None) -> list[int]:
        """The words' ids (``encode`` adds the special tokens). Unknown words -> [UNK], or with
        ``strict`` a ValueError listing every unknown word."""
        return self.convert_tokens_to_ids(split_words(text), strict=strict)

    def decode(self, ids: Any, skip_special_tokens: bool = True) -> str:
        """Ids -> text. With ``skip_special_tokens`` every special token except [UNK] is dropped."""
        tokens = self.convert_ids_to_tokens(ids)
        if skip_special_tokens:
            tokens = [t for t in tokens if t == UNK or t not in SPECIAL_TOKENS]
        return _join(tokens)

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike) -> Path:
        """Write the vocabulary as JSON (atomically)."""
        payload = {"format": _FORMAT, "version": _VERSION, "tokens": self.tokens}

        def write(tmp: Path) -> None:
            tmp.write_text(json.dumps(payload, indent=1, ensure_ascii=False) + "\n", "utf-8")

        return atomic_write(path, write)

    @classmethod
    def load(cls, path: str | os.PathLike, strict: bool = False) -> Tokenizer:
        """Read a file written by ``save``; a malformed file raises ValueError saying why."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer file not found: {path}")
        try:
            payload = json.loads(path.read_text("utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(
                f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})"
            ) from None
        except UnicodeDecodeError as e:
            raise ValueError(f"{path}: not UTF-8 text ({e})") from None
        if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
            raise ValueError(
                f'{path}: not a minivlm tokenizer file (expected "format": "{_FORMAT}")'
            )
        if payload.get("version") != _VERSION:
            raise ValueError(f"{path}: unsupported version {payload.get('version')!r}")
        tokens = payload.get("tokens")
        if not isinstance(tokens, list) or not all(isinstance(t, str) and t for t in tokens):
            raise ValueError(f'{path}: "tokens" must be a list of non-empty strings')
        if tokens[: len(SPECIAL_TOKENS)] != SPECIAL_TOKENS:
            raise ValueError(
                f"{path}: the first tokens must be the special tokens {SPECIAL_TOKENS}, "
                f"got {tokens[: len(SPECIAL_TOKENS)]}"
            )
        dupes = sorted(t for t, c in Counter(tokens).items() if c > 1)
        if dupes:
            raise ValueError(f"{path}: duplicate tokens {dupes[:5]}")
        return cls(tokens[len(SPECIAL_TOKENS) :], strict=strict)


def shapes_tokenizer(strict: bool = False) -> Tokenizer:
    """The tokenizer for the shapes world: ``vocabulary()`` plus ``PUNCTUATION``.

    Every caption, negative, question, answer and dialogue the world produces encodes without
    [UNK]; its size is printed by ``len(shapes_tokenizer())``.
    """
    from minivlm.data.shapes import vocabulary

    return Tokenizer(vocabulary() + PUNCTUATION, strict=strict)


class HFTokenizerAdapter(_TokenizerMixin):
    """Give a Hugging Face tokenizer the ``Tokenizer`` interface (ids, encode, __call__, decode).

    Special tokens the HF tokenizer lacks have id ``None``; asking to add them raises ValueError.
    ``<image>`` maps to the HF token ``"<image>"`` when its vocabulary has one.
    """

    def __init__(self, hf_tokenizer: Any) -> None:
        for attr in ("convert_tokens_to_ids", "decode", "__call__"):
            if not hasattr(hf_tokenizer, attr):
                raise TypeError(
                    f"expected a Hugging Face tokenizer, got {type(hf_tokenizer).__name__}"
                )
        self.hf = hf_tokenizer
        if hf_tokenizer.pad_token_id is None:
            raise ValueError("the Hugging Face tokenizer has no pad token; set one first")
        self.pad_id = int(hf_tokenizer.pad_token_id)
        self.unk_id = hf_tokenizer.unk_token_id
        self.cls_id = hf_tokenizer.cls_token_id
        self.sep_id = hf_tokenizer.sep_token_id
        self.mask_id = hf_tokenizer.mask_token_id
        self.bos_id = hf_tokenizer.bos_token_id
        self.eos_id = hf_tokenizer.eos_token_id
        image = hf_tokenizer.convert_tokens_to_ids("<image>")
        self.image_id = None if image is None or image == self.unk_id else int(image)

    @property
    def vocab_size(self) -> int:
        return len(self.hf)

    def __repr__(self) -> str:
        return f"HFTokenizerAdapter({type(self.hf).__name__}, vocab_size={self.vocab_size})"

    def _word_ids(self, text: str) -> list[int]:
        return list(self.hf(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: Any, skip_special_tokens: bool = True) -> str:
        return self.hf.decode(_as_id_list(ids), skip_special_tokens=skip_special_tokens)

    def convert_ids_to_tokens(self, ids: Any) -> list[str]:
        return list(self.hf.convert_ids_to_tokens(_as_id_list(ids)))

    def convert_tokens_to_ids(self, tokens: Sequence[str]) -> list[int]:
        return list(self.hf.convert_tokens_to_ids(list(tokens)))
