"""The built-in demo text: short English stories from a small grammar, made by code (no download),
the same on every machine for a given seed.

It has structure a tiny model learns within minutes and that shows in samples: word spelling,
article-noun agreement ("a" / "an"), subject-verb agreement ("the fox runs" / "the foxes run"),
sentences that refer back to a named character, and small sums spelled in words ("two plus three
is five"), which need the model to carry a fact across a sentence.
"""
from __future__ import annotations

import random
from pathlib import Path

NAMES = ["Ada", "Ben", "Cleo", "Dan", "Eva", "Finn", "Gus", "Hana", "Ivo", "June", "Kai", "Lena"]
ANIMALS = [("fox", "foxes"), ("owl", "owls"), ("cat", "cats"), ("dog", "dogs"), ("eel", "eels"),
           ("hen", "hens"), ("ant", "ants"), ("bear", "bears"), ("mouse", "mice"), ("goose", "geese")]
ADJECTIVES = ["red", "old", "small", "quiet", "brave", "green", "tired", "happy", "odd", "little", "angry", "young"]
PLACES = ["near the river", "in the forest", "under the old bridge", "on the hill", "by the lake", "in the garden",
          "at the market", "behind the barn"]
VERBS = [("sees", "see"), ("chases", "chase"), ("follows", "follow"), ("finds", "find"), ("helps", "help"),
         ("watches", "watch")]
THINGS = ["apple", "egg", "umbrella", "hat", "book", "orange", "key", "lamp", "ice cream", "owl feather"]
FEELINGS = ["glad", "sad", "sleepy", "hungry", "surprised", "calm"]
NUMBERS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve"]


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _noun_phrase(rng: random.Random) -> tuple[str, bool]:
    """A noun phrase and whether it is plural."""
    singular, plural = rng.choice(ANIMALS)
    adjective = rng.choice(ADJECTIVES)
    if rng.random() < 0.3:
        return f"the {adjective} {plural}", True
    return (f"the {adjective} {singular}" if rng.random() < 0.5 else f"{_article(adjective)} {adjective} {singular}"), False


def _sentence(rng: random.Random, name: str) -> str:
    kind = rng.random()
    if kind < 0.35:
        subject, plural = _noun_phrase(rng)
        verb = rng.choice(VERBS)[1 if plural else 0]
        obj = _noun_phrase(rng)[0]
        return f"{subject} {verb} {obj} {rng.choice(PLACES)}."
    if kind < 0.6:
        thing = rng.choice(THINGS)
        return f"{name} finds {_article(thing)} {thing} {rng.choice(PLACES)} and feels {rng.choice(FEELINGS)}."
    if kind < 0.8:
        a, b = rng.randrange(7), rng.randrange(6)
        return f"{name} counts: {NUMBERS[a]} plus {NUMBERS[b]} is {NUMBERS[a + b]}."
    count = rng.randrange(2, 6)
    return f"{name} has {NUMBERS[count]} {rng.choice(ANIMALS)[1]} and {NUMBERS[count - 1]} of them sleep."


def story(rng: random.Random) -> str:
    """One document: a named character and two to five sentences."""
    name = rng.choice(NAMES)
    sentences = [f"This is a story about {name}."] + [_sentence(rng, name) for _ in range(rng.randrange(2, 6))]
    sentences = [s[0].upper() + s[1:] for s in sentences]
    return " ".join(sentences) + " The end."


def generate(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [story(rng) for _ in range(count)]


SPLITS = {"train": 1, "valid": 2, "test": 3}  # seeds: the splits are drawn independently


def write_demo_text(directory: Path, sizes: dict[str, int]) -> dict[str, Path]:
    """Writes train.txt, valid.txt and test.txt (one story per line) and returns their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, count in sizes.items():
        paths[split] = directory / f"{split}.txt"
        paths[split].write_text("".join(line + "\n" for line in generate(count, SPLITS[split])), encoding="utf-8")
    return paths
