"""Caption cleaning and the word vocabulary shared by every captioning model.

Cleaning follows the original Flickr8k merge-model recipe (lowercase, strip punctuation, drop
one-letter and non-alphabetic tokens, wrap in ``startseq ... endseq``) so that vocabularies and
scores stay comparable with the seed project; it keeps the words of every script, their letters
with their combining marks, in Unicode's composed form (NFC).
"""

from __future__ import annotations

import json
import string
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from captioning.jsonfile import read_json

START = "startseq"
END = "endseq"
PAD = "<pad>"
UNK = "<unk>"

VOCABULARY_FORMAT = "captioning.vocabulary/1"

_PUNCTUATION_TABLE = str.maketrans("", "", string.punctuation)
# Zero-width (non-)joiners spell words in Persian and Indic scripts: kept inside a word, never
# counted as letters. Other invisible format characters (soft hyphen, bidi marks) are dropped.
_JOINERS = "\u200c\u200d"


def clean_caption(text: str, *, keep_one_letter_words: bool = False) -> str:
    """Clean one raw caption and wrap it in ``startseq ... endseq``.

    ``text`` is a caption as written by an annotator, in any script. The result is lowercase in
    Unicode's composed form (NFC), has punctuation and symbols (Unicode categories P* and S*,
    as ``string.punctuation`` is ASCII's) stripped from every token, and keeps only the tokens
    made of letters and their combining marks (categories L* and M*: a token with a digit of any
    script is dropped) of at least two characters (one with ``keep_one_letter_words``), joined
    by single spaces, e.g. ``"A child in a pink dress ."`` -> ``"startseq child in pink dress
    endseq"``. Characters are counted in NFC, marks included, as the seed counted them: ``"à"``
    is one like ``"a"``, and Hindi ``"है"`` (a letter and a vowel sign) two, so it is kept.

    Returns the empty string ``""`` (not ``"startseq endseq"``) when no word survives, so that
    callers can skip the caption with a plain truth test.
    """
    min_length = 1 if keep_one_letter_words else 2
    words = []
    for token in unicodedata.normalize("NFC", text.lower()).split():
        word, length = _word(token)
        if length >= min_length:
            words.append(word)
    if not words:
        return ""
    return " ".join([START, *words, END])


def _word(token: str) -> tuple[str, int]:
    """``token`` without its punctuation, symbols and format characters, and how many letters
    and marks it has; ``("", 0)`` when a digit or control character makes it no word."""
    if token.isascii():  # nearly every English token: the seed's own rule, fast
        token = token.translate(_PUNCTUATION_TABLE)
        return (token, len(token)) if token.isalpha() else ("", 0)
    kept, length = [], 0
    for char in token:
        category = unicodedata.category(char)
        if category[0] in "PS" or (category == "Cf" and char not in _JOINERS):
            continue
        if category[0] not in "LM" and char not in _JOINERS:
            return "", 0
        kept.append(char)
        length += char not in _JOINERS
    return "".join(kept).strip(_JOINERS), length


class Vocabulary:
    """A fixed list of tokens; a token's id is its position in the list.

    Id 0 is always ``<pad>`` and id 1 ``<unk>``; ``startseq`` and ``endseq`` are always present.
    Build one from cleaned captions with :meth:`Vocabulary.build`, or read a saved one with
    :meth:`Vocabulary.load`. Instances are not meant to be changed after construction.
    """

    def __init__(self, tokens: Sequence[str], min_count: int = 2) -> None:
        """Wrap ``tokens`` (``tokens[i]`` has id ``i``); raises ``ValueError`` if malformed."""
        tokens = tuple(tokens)
        problem = _token_list_problem(tokens)
        if problem:
            raise ValueError(f"invalid vocabulary: {problem}")
        self._tokens = tokens
        self._ids = {token: i for i, token in enumerate(tokens)}
        self._min_count = int(min_count)

    @classmethod
    def build(cls, captions: Iterable[str], min_count: int = 2) -> Vocabulary:
        """Count the words of cleaned captions and keep those seen at least ``min_count`` times.

        ``captions`` are strings as returned by :func:`clean_caption` (words separated by
        whitespace; ``startseq``/``endseq`` may be present and are always kept anyway).
        ``min_count=2`` reproduces the seed's "seen more than once" rule. Words are ordered by
        descending count, then alphabetically, after ``<pad>``, ``<unk>``, ``startseq``,
        ``endseq``, so the same captions always give the same ids.
        """
        if min_count < 1:
            raise ValueError(f"min_count must be at least 1, got {min_count}")
        counts: Counter[str] = Counter()
        for caption in captions:
            counts.update(caption.split())
        reserved = (PAD, UNK, START, END)
        for token in reserved:
            counts.pop(token, None)
        kept = sorted(
            (word for word, count in counts.items() if count >= min_count),
            key=lambda word: (-counts[word], word),
        )
        return cls([*reserved, *kept], min_count=min_count)

    @property
    def tokens(self) -> list[str]:
        """All tokens in id order (a copy)."""
        return list(self._tokens)

    @property
    def min_count(self) -> int:
        """The ``min_count`` the vocabulary was built with."""
        return self._min_count

    @property
    def pad_id(self) -> int:
        return self._ids[PAD]

    @property
    def unk_id(self) -> int:
        return self._ids[UNK]

    @property
    def start_id(self) -> int:
        return self._ids[START]

    @property
    def end_id(self) -> int:
        return self._ids[END]

    def __len__(self) -> int:
        return len(self._tokens)

    def __contains__(self, token: object) -> bool:
        return token in self._ids

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Vocabulary):
            return NotImplemented
        return self._tokens == other._tokens

    def __hash__(self) -> int:
        return hash(self._tokens)

    def __repr__(self) -> str:
        return f"Vocabulary({len(self)} tokens, min_count={self._min_count})"

    def encode(self, caption: str) -> list[int]:
        """Map the whitespace-separated words of a cleaned caption to ids (unknown -> unk_id).

        No ``startseq``/``endseq`` is added: a caption from :func:`clean_caption` has them.
        """
        unk = self.unk_id
        return [self._ids.get(word, unk) for word in caption.split()]

    def decode(self, ids: Iterable[int]) -> str:
        """Turn ids back into a space-separated sentence.

        Stops at the first ``endseq`` id and leaves out ``<pad>``, ``startseq`` and ``endseq``;
        ``<unk>`` stays visible. Raises ``ValueError`` for an id outside the vocabulary.
        """
        skip = {self.pad_id, self.start_id}
        end = self.end_id
        words = []
        for raw_id in ids:
            token_id = int(raw_id)
            if token_id == end:
                break
            if token_id in skip:
                continue
            if not 0 <= token_id < len(self._tokens):
                raise ValueError(
                    f"token id {token_id} is outside the vocabulary (0..{len(self) - 1})"
                )
            words.append(self._tokens[token_id])
        return " ".join(words)

    def save(self, path: Path | str) -> None:
        """Write the vocabulary as JSON (``{"format", "tokens", "min_count"}``) to ``path``."""
        payload = {
            "format": VOCABULARY_FORMAT,
            "tokens": list(self._tokens),
            "min_count": self._min_count,
        }
        Path(path).write_text(
            json.dumps(payload, ensure_ascii=False, indent=1) + "\n", encoding="utf-8"
        )

    @classmethod
    def load(cls, path: Path | str) -> Vocabulary:
        """Read a vocabulary written by :meth:`save`.

        Raises ``ValueError`` naming the file when it cannot be read, is larger than
        ``jsonfile.MAX_BYTES``, or is not UTF-8 JSON in the ``captioning.vocabulary/1`` format.
        """
        path = Path(path)
        payload = read_json(path, ValueError)
        if not isinstance(payload, dict) or payload.get("format") != VOCABULARY_FORMAT:
            found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
            raise ValueError(
                f"{path}: not a vocabulary file: expected a JSON object with "
                f'"format": "{VOCABULARY_FORMAT}", found {found!r}'
            )
        tokens = payload.get("tokens")
        min_count = payload.get("min_count", 2)
        problem = _token_list_problem(tokens)
        if problem is None and not (isinstance(min_count, int) and not isinstance(min_count, bool)):
            problem = f'"min_count" must be an integer, found {min_count!r}'
        if problem:
            raise ValueError(f"{path}: invalid vocabulary file: {problem}")
        return cls(tokens, min_count=min_count)


def _token_list_problem(tokens: object) -> str | None:
    """Say what is wrong with a token list, or return None if it is usable."""
    if not isinstance(tokens, (list, tuple)) or not all(isinstance(t, str) for t in tokens):
        return '"tokens" must be a list of strings'
    if list(tokens[:2]) != [PAD, UNK]:
        return f"the first two tokens must be {PAD!r} and {UNK!r}, found {list(tokens[:2])!r}"
    missing = [t for t in (START, END) if t not in tokens]
    if missing:
        return f"missing reserved tokens {missing!r}"
    duplicates = sorted(t for t, n in Counter(tokens).items() if n > 1)
    if duplicates:
        return f"duplicate tokens {duplicates[:10]!r}"
    if any(not t or any(c.isspace() for c in t) for t in tokens):
        return "tokens must be non-empty and contain no whitespace"
    return None
