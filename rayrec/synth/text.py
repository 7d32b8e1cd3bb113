"""Item titles, texts and tags composed from the topic vocabularies, vectorised with Arrow.

Each item's words are drawn (counter-based, so per item) from its primary topic's vocabulary, its
secondary topic's (in proportion to the secondary share) and the shared filler; clickbait items open
their title with a clickbait phrase and sprinkle clickbait words through the description. A small
``wording_noise`` makes the wording lie about the trait now and then, so the text predicts clickbait
well but not perfectly. Tokens become strings with one ``take`` from the vocabulary's form table and
one ``binary_join`` per field: no Python loop over items.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rayrec.synth.hashing import Stream, hashed_uniform
from rayrec.synth.vocabulary import Vocabulary
from rayrec.synth.world import ItemAttributes

TITLE_WORDS = (2, 4)
"""Fewest and most topic words in a title (after an optional opener)."""
SENTENCE_WORDS = (8, 14)
"""Fewest and most words in each of the description's two sentences."""
NEUTRAL_OPENER_RATE = 0.4
"""Chance that an ordinary title opens with a neutral phrase ("a guide to")."""
CLICKBAIT_WORD_RATE = 0.15
"""Chance that a word of a clickbait-worded description is clickbait wording."""
PRIMARY_WORD_RATE = 0.5
"""Chance that any other description word comes from the primary topic (then secondary, then filler)."""
SECONDARY_TAG_SHARE = 0.2
"""Items whose secondary share exceeds this are tagged with both topics."""

_TITLE_SLOTS = 1 + TITLE_WORDS[1]
_SENTENCE_SLOTS = SENTENCE_WORDS[1]
# Columns of the per-item uniform draws.
_FLIP, _OPENER_KIND, _OPENER, _TITLE_LEN = 0, 1, 2, 3
_TITLE_KIND = slice(4, 4 + TITLE_WORDS[1])
_TITLE_WORD = slice(_TITLE_KIND.stop, _TITLE_KIND.stop + TITLE_WORDS[1])
_SENTENCE_LEN = slice(_TITLE_WORD.stop, _TITLE_WORD.stop + 2)
_DESC_KIND = slice(_SENTENCE_LEN.stop, _SENTENCE_LEN.stop + 2 * _SENTENCE_SLOTS)
_DESC_WORD = slice(_DESC_KIND.stop, _DESC_KIND.stop + 2 * _SENTENCE_SLOTS)
_DRAWS = _DESC_WORD.stop


@dataclass(frozen=True)
class ItemText:
    """The written fields of a set of items (Arrow arrays of length n)."""

    title: pa.StringArray
    """[n] titles in title case."""
    text: pa.StringArray
    """[n] title plus a two-sentence description: what the encoder reads."""
    category: pa.StringArray
    """[n] primary topic name."""
    tags: pa.ListArray
    """[n] topic names (primary, and secondary when it is strong)."""
    clickbait_wording: np.ndarray
    """[n] bool whether the text is written as clickbait (the trait, flipped with ``wording_noise``)."""


def _pick(first: np.ndarray | int, count: np.ndarray | int, u: np.ndarray) -> np.ndarray:
    """Token id ``first + floor(u * count)``: one of ``count`` consecutive tokens, uniformly."""
    return first + np.floor(u * count).astype(np.int64)


def _join(vocabulary_forms: pa.Array, forms: np.ndarray, valid: np.ndarray, separator: str) -> pa.Array:
    """[n, slots] form ids with a validity mask → [n] strings of the valid forms joined by ``separator``."""
    offsets = np.zeros(len(forms) + 1, dtype=np.int64)
    np.cumsum(valid.sum(axis=1), out=offsets[1:])
    words = vocabulary_forms.take(pa.array(forms[valid]))  # row-major: each row's words in order
    return pc.binary_join(pa.LargeListArray.from_arrays(pa.array(offsets), words), separator)


def compose_item_text(
    vocabulary: Vocabulary, attributes: ItemAttributes, seed: int, wording_noise: float
) -> ItemText:
    """Titles, texts, categories and tags of the items described by ``attributes``."""
    vocab = vocabulary
    n = len(attributes)
    u = hashed_uniform(seed, Stream.TEXT, attributes.index, width=_DRAWS)  # [n, draws]
    topic = attributes.topic.astype(np.int64)[:, None]  # [n, 1]
    secondary = attributes.secondary.astype(np.int64)[:, None]  # [n, 1]
    share = attributes.secondary_share[:, None]  # [n, 1]
    wording = attributes.clickbait ^ (u[:, _FLIP] < wording_noise)  # [n]

    # Title: [opener] + 2-4 topic words, every word in title case.
    neutral = ~wording & (u[:, _OPENER_KIND] < NEUTRAL_OPENER_RATE)
    opener = np.where(
        wording,
        _pick(vocab.clickbait_openers[0], vocab.clickbait_openers[1], u[:, _OPENER]),
        _pick(vocab.neutral_openers[0], vocab.neutral_openers[1], u[:, _OPENER]),
    )
    from_secondary = u[:, _TITLE_KIND] < share  # [n, 4]
    title_topic = np.where(from_secondary, secondary, topic)  # [n, 4]
    title_words = _pick(
        vocab.topic_offset[title_topic], vocab.topic_count[title_topic], u[:, _TITLE_WORD]
    )  # [n, 4]
    title_len = _pick(TITLE_WORDS[0], TITLE_WORDS[1] - TITLE_WORDS[0] + 1, u[:, _TITLE_LEN])  # [n]
    title_tokens = np.concatenate([opener[:, None], title_words], axis=1)  # [n, 5]
    title_valid = np.concatenate(
        [(wording | neutral)[:, None], np.arange(TITLE_WORDS[1])[None, :] < title_len[:, None]], axis=1
    )  # [n, 5]

    # Description: two sentences of clickbait / primary / secondary / filler words.
    kind = u[:, _DESC_KIND]  # [n, 28]
    clickbait_rate = np.where(wording, CLICKBAIT_WORD_RATE, 0.0)[:, None]  # [n, 1]
    is_clickbait = kind < clickbait_rate
    rest = (kind - clickbait_rate) / (1.0 - clickbait_rate)  # [n, 28] rescaled to [0, 1)
    is_primary = ~is_clickbait & (rest < PRIMARY_WORD_RATE)
    is_secondary = ~is_clickbait & ~is_primary & (rest < PRIMARY_WORD_RATE + share)
    word_topic = np.where(is_secondary, secondary, topic)  # [n, 28]
    word_u = u[:, _DESC_WORD]
    desc_tokens = np.where(
        is_clickbait,
        _pick(vocab.clickbait[0], vocab.clickbait[1], word_u),
        np.where(
            is_primary | is_secondary,
            _pick(vocab.topic_offset[word_topic], vocab.topic_count[word_topic], word_u),
            _pick(vocab.filler[0], vocab.filler[1], word_u),
        ),
    )  # [n, 28]
    sentence_len = _pick(
        SENTENCE_WORDS[0], SENTENCE_WORDS[1] - SENTENCE_WORDS[0] + 1, u[:, _SENTENCE_LEN]
    )  # [n, 2]
    slot = np.tile(np.arange(_SENTENCE_SLOTS), 2)[None, :]  # [1, 28] position within its sentence
    length = np.repeat(sentence_len, _SENTENCE_SLOTS, axis=1)  # [n, 28]
    variant = np.where(
        slot == 0, Vocabulary.SENTENCE_START, np.where(slot == length - 1, Vocabulary.SENTENCE_END, 0)
    )

    forms = pa.array(vocab.forms)
    title = _join(forms, Vocabulary.TITLE * vocab.size + title_tokens, title_valid, " ")
    description = _join(forms, variant * vocab.size + desc_tokens, slot < length, " ")

    names = pa.array(vocab.topic_names)
    tag_topics = np.concatenate([topic, secondary], axis=1)  # [n, 2]
    tag_valid = np.ones((n, 2), dtype=bool)
    tag_valid[:, 1] = (attributes.secondary_share > SECONDARY_TAG_SHARE) & (
        attributes.secondary != attributes.topic
    )
    tag_offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(tag_valid.sum(axis=1), out=tag_offsets[1:])
    tags = pa.ListArray.from_arrays(pa.array(tag_offsets), names.take(pa.array(tag_topics[tag_valid])))
    return ItemText(
        title=title,
        text=pc.binary_join_element_wise(title, description, ". "),
        category=names.take(pa.array(attributes.topic)),
        tags=tags,
        clickbait_wording=wording,
    )
