"""A synthetic catalog of any size, with text drawn from the words of real product texts.

Real shops' catalogs with full product records (category paths, brands, tags, descriptions) are
not in ../shared/data, and the two real ones are small (3.6k and 9.7k products). This builds
products of the shape a shop sends, from a fixed seed:

- name: 4-8 words, drawn by frequency from the words of real product names (title-cased);
- description: sentences of words drawn by frequency from real product descriptions, its length
  log-normal around DESCRIPTION_MEDIAN characters (clipped to 80-1,500);
- category: a path of 2 (30%) or 3 levels in a tree of 12 x 8 x 6 nodes named from name words;
- brand: one of 1,500 names, Zipf-distributed (a few big brands, a long tail);
- tags: 0-5 distinct name words; price: log-normal around 25, in EUR; 90% in stock.

Word frequencies, not uniform draws: the inverted index, the TF-IDF vocabulary and the model's
size all depend on how often words repeat.
"""

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

DESCRIPTION_MEDIAN = 350
DESCRIPTION_SPREAD = 0.5  # sigma of the log-normal: most descriptions 150-800 characters
DESCRIPTION_BOUNDS = (80, 1500)
NAME_WORDS = (4, 8)
SENTENCE_WORDS = 12
TOP_CATEGORIES, SUBCATEGORIES, LEAF_CATEGORIES = 12, 8, 6
TWO_LEVEL_SHARE = 0.3
BRANDS = 1500
MAX_TAGS = 5
PRICE_MEDIAN = 25.0
IN_STOCK_SHARE = 0.9

_WORD = re.compile(r"[a-z]{2,}")


@dataclass(frozen=True, slots=True)
class Words:
    """Distinct words and how often each occurred: draws follow the real frequencies."""

    words: list[str]
    probabilities: npt.NDArray[np.float64]

    @classmethod
    def of(cls, texts: Iterable[str]) -> "Words":
        counts = Counter(word for text in texts for word in _WORD.findall(text.lower()))
        if not counts:
            raise ValueError("no words in the texts to draw from")
        words = sorted(counts)
        frequency = np.array([counts[word] for word in words], dtype=np.float64)
        return cls(words, frequency / frequency.sum())

    @property
    def mean_length(self) -> float:
        """Characters per drawn word, on average."""
        lengths = np.array([len(word) for word in self.words], dtype=np.float64)
        return float(lengths @ self.probabilities)

    def draw(self, rng: np.random.Generator, count: int) -> list[str]:
        picks = rng.choice(len(self.words), size=count, p=self.probabilities)
        return [self.words[pick] for pick in picks]


@dataclass(frozen=True, slots=True)
class Vocabulary:
    names: Words
    descriptions: Words

    @classmethod
    def of(cls, names: Iterable[str], descriptions: Iterable[str]) -> "Vocabulary":
        return cls(Words.of(names), Words.of(descriptions))


def _title(words: list[str]) -> str:
    return " ".join(word.capitalize() for word in words)


def _category_paths(rng: np.random.Generator, names: Words) -> tuple[list[str], list[str]]:
    """(second-level paths, third-level paths) of the category tree."""
    second: list[str] = []
    third: list[str] = []
    for top in range(TOP_CATEGORIES):
        top_name = _title(names.draw(rng, 1 + top % 2))
        for _ in range(SUBCATEGORIES):
            path = f"{top_name} > {_title(names.draw(rng, int(rng.integers(1, 3))))}"
            second.append(path)
            third += [
                f"{path} > {_title(names.draw(rng, int(rng.integers(1, 3))))}"
                for _ in range(LEAF_CATEGORIES)
            ]
    return second, third


def _description(words: list[str]) -> str:
    sentences = (
        " ".join(words[start : start + SENTENCE_WORDS]).capitalize()
        for start in range(0, len(words), SENTENCE_WORDS)
    )
    return ". ".join(sentences) + "."


def generate(count: int, vocabulary: Vocabulary, seed: int = 0) -> list[dict[str, Any]]:
    """`count` products as `POST /products/batch` takes them (ids syn-0000000, ...)."""
    rng = np.random.default_rng(seed)
    second, third = _category_paths(rng, vocabulary.names)
    brand_names = [
        _title(vocabulary.names.draw(rng, int(rng.integers(1, 3)))) for _ in range(BRANDS)
    ]
    zipf = 1.0 / np.arange(1, BRANDS + 1)
    brand_picks = rng.choice(BRANDS, size=count, p=zipf / zipf.sum())

    name_lengths = rng.integers(NAME_WORDS[0], NAME_WORDS[1] + 1, size=count)
    name_words = vocabulary.names.draw(rng, int(name_lengths.sum()))
    targets = np.clip(
        rng.lognormal(np.log(DESCRIPTION_MEDIAN), DESCRIPTION_SPREAD, size=count),
        *DESCRIPTION_BOUNDS,
    )
    # A space after every word: words per description to reach its target length.
    description_lengths = np.maximum(
        3, np.round(targets / (vocabulary.descriptions.mean_length + 1))
    ).astype(np.int64)
    description_words = vocabulary.descriptions.draw(rng, int(description_lengths.sum()))
    tag_counts = rng.integers(0, MAX_TAGS + 1, size=count)
    tag_words = vocabulary.names.draw(rng, int(tag_counts.sum()))
    two_levels = rng.random(count) < TWO_LEVEL_SHARE
    second_picks = rng.integers(0, len(second), size=count)
    leaf_picks = rng.integers(0, LEAF_CATEGORIES, size=count)
    prices = np.maximum(0.99, rng.lognormal(np.log(PRICE_MEDIAN), 1.0, size=count)).round(2)
    in_stock = rng.random(count) < IN_STOCK_SHARE

    products: list[dict[str, Any]] = []
    name_at = description_at = tag_at = 0
    for row in range(count):
        name_end = name_at + int(name_lengths[row])
        description_end = description_at + int(description_lengths[row])
        tag_end = tag_at + int(tag_counts[row])
        category = (
            second[second_picks[row]]
            if two_levels[row]
            else third[second_picks[row] * LEAF_CATEGORIES + leaf_picks[row]]
        )
        products.append(
            {
                "id": f"syn-{row:07d}",
                "name": _title(name_words[name_at:name_end]),
                "description": _description(description_words[description_at:description_end]),
                "category": category,
                "brand": brand_names[brand_picks[row]],
                "tags": list(dict.fromkeys(tag_words[tag_at:tag_end])),
                "price": float(prices[row]),
                "currency": "EUR",
                "in_stock": bool(in_stock[row]),
            }
        )
        name_at, description_at, tag_at = name_end, description_end, tag_end
    return products
