"""A deterministic synthetic language pair, so the default command trains and evaluates with no download.

The source side is English-like; the target side ("Tessan", invented here) differs in ways that need
real translation skills rather than word-for-word lookup:

- word order: source S-V-O-PP and "A because B" become target S-PP-O-V and "B ke, A";
- agreement: determiners and adjectives agree with the noun's gender, number and case, and the verb
  ending agrees with the subject's person and number;
- inflection: English irregular plurals and past tenses ("mice", "took") map to regular target
  suffixes, and the source's "does not" / "will" auxiliaries fold into one target verb form;
- numbers: source digits ("37") become compositional target number words ("tirako sipa"), and the
  noun after them is plural;
- two-adjective phrases come out in reverse order after the noun.

``generate(n)`` returns the same pairs for the same arguments on every machine and Python version (it
uses only ``random.Random`` with a fixed seed); ``write_demo_corpus`` writes the fixed train/valid/test
split as line-aligned files.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

# Nouns: (English singular, English plural, target stem, gender). Gender "a" stems pluralise with
# "-en", gender "e" stems with "-s"; the gender also picks determiner and adjective endings.
NOUNS = [
    ("dog", "dogs", "hund", "a"), ("cat", "cats", "miro", "e"), ("house", "houses", "dom", "a"),
    ("child", "children", "kala", "e"), ("man", "men", "vir", "a"), ("woman", "women", "feme", "e"),
    ("mouse", "mice", "mus", "a"), ("book", "books", "libe", "e"), ("tree", "trees", "arb", "a"),
    ("river", "rivers", "flua", "e"), ("teacher", "teachers", "dokt", "a"), ("friend", "friends", "amike", "e"),
    ("car", "cars", "vetur", "a"), ("city", "cities", "urbe", "e"), ("bird", "birds", "pask", "a"),
    ("apple", "apples", "pome", "e"), ("farmer", "farmers", "kamp", "a"), ("horse", "horses", "ceva", "e"),
    ("letter", "letters", "leter", "a"), ("garden", "gardens", "gardo", "e"), ("fish", "fish", "fis", "a"),
    ("king", "kings", "reja", "e"), ("sheep", "sheep", "ovin", "a"), ("doctor", "doctors", "medo", "e"),
    ("boat", "boats", "nav", "a"), ("song", "songs", "kanta", "e"), ("girl", "girls", "knab", "a"),
    ("stone", "stones", "pera", "e"), ("baker", "bakers", "pist", "a"), ("table", "tables", "tabe", "e"),
    ("wolf", "wolves", "lup", "a"), ("knife", "knives", "koto", "e"),
]

# Adjectives: (English, target stem); the target adds -o/-a (singular) or -oj/-aj (plural) by gender.
ADJECTIVES = [
    ("big", "grand"), ("small", "mal"), ("red", "rud"), ("old", "ald"), ("young", "jun"),
    ("happy", "fel"), ("quiet", "kvet"), ("green", "verd"), ("strong", "fort"), ("tired", "lac"),
    ("clever", "sag"), ("dark", "nokt"), ("new", "nov"), ("heavy", "pez"), ("kind", "bon"),
    ("angry", "kolr"),
]

# Transitive verbs: (base, third-person present, past, target stem).
TRANSITIVE = [
    ("see", "sees", "saw", "vid"), ("take", "takes", "took", "pren"), ("eat", "eats", "ate", "manĝ"),
    ("find", "finds", "found", "trov"), ("hear", "hears", "heard", "aud"), ("buy", "buys", "bought", "ace"),
    ("give", "gives", "gave", "don"), ("write", "writes", "wrote", "skrib"), ("love", "loves", "loved", "am"),
    ("follow", "follows", "followed", "sekv"), ("carry", "carries", "carried", "port"),
    ("help", "helps", "helped", "help"), ("catch", "catches", "caught", "kapt"), ("build", "builds", "built", "konstru"),
    ("sell", "sells", "sold", "vend"), ("draw", "draws", "drew", "desen"),
]

# Intransitive verbs take no object, only an optional place phrase.
INTRANSITIVE = [
    ("sleep", "sleeps", "slept", "dorm"), ("run", "runs", "ran", "kur"), ("sing", "sings", "sang", "kant"),
    ("wait", "waits", "waited", "atend"), ("swim", "swims", "swam", "naĝ"), ("work", "works", "worked", "labor"),
    ("laugh", "laughs", "laughed", "rid"), ("dance", "dances", "danced", "danc"),
]

# Prepositions become postpositions after the noun phrase.
PREPOSITIONS = [("in", "ene"), ("near", "apu"), ("with", "kun"), ("behind", "malan"), ("under", "sub"), ("for", "por")]

# (English subject form, English object form, target subject, target object, person-number).
PRONOUNS = [
    ("I", "me", "mi", "min", "1sg"), ("you", "you", "vi", "vin", "2sg"), ("he", "him", "li", "lin", "3sg"),
    ("she", "her", "ŝi", "ŝin", "3sg"), ("we", "us", "ni", "nin", "1pl"), ("they", "them", "ili", "ilin", "3pl"),
]

TENSE_SUFFIX = {"past": "it", "present": "at", "future": "ot"}
PERSON_SUFFIX = {"1sg": "e", "2sg": "u", "3sg": "a", "1pl": "em", "3pl": "an"}

# Source conjunctions: "and" keeps clause order; the subordinating ones move their clause first and
# the conjunction to its end.
CONJUNCTIONS = [("and", "kaj", False), ("because", "ke", True), ("when", "kiam", True), ("although", "tamen", True)]

# Target determiners by (gender, number); the accusative adds "-n".
DETERMINERS = {
    "the": {("a", "sg"): "lo", ("a", "pl"): "li", ("e", "sg"): "la", ("e", "pl"): "le"},
    "this": {("a", "sg"): "tio", ("a", "pl"): "tioj", ("e", "sg"): "tia", ("e", "pl"): "tiaj"},
    "some": {("a", "pl"): "kelkoj", ("e", "pl"): "kelkaj"},
}

UNITS = ["nul", "ena", "dua", "tira", "kora", "pema", "sesa", "sipa", "okta", "nova"]


def number_words(n: int) -> str:
    """Target words for 2 <= n <= 99: tens as "<unit>ko" ("deko" for ten), then the unit."""
    tens, unit = divmod(n, 10)
    words = []
    if tens:
        words.append("deko" if tens == 1 else UNITS[tens] + "ko")
    if unit:
        words.append(UNITS[unit])
    return " ".join(words)


@dataclass(frozen=True)
class Phrase:
    src: str
    tgt: str


@dataclass(frozen=True)
class Subject:
    src: str
    tgt: str
    person: str  # person-number key of PERSON_SUFFIX


class Generator:
    """Draws one sentence pair at a time from a seeded random stream."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)

    def noun_phrase(self, case: str) -> tuple[Phrase, bool]:
        """A noun phrase in case "nom" or "acc"; returns it and whether it is plural."""
        rng = self.rng
        src_sg, src_pl, stem, gender = rng.choice(NOUNS)
        kind = rng.choices(["the", "a", "number", "some", "this"], weights=[4, 3, 3, 1, 1])[0]
        plural = kind in ("number", "some") or (kind in ("the", "this") and rng.random() < 0.4)
        adjectives = rng.sample(ADJECTIVES, k=rng.choices([0, 1, 2], weights=[4, 4, 2])[0])

        acc = "n" if case == "acc" else ""
        number = "pl" if plural else "sg"
        if kind == "number":
            count = rng.randint(2, 99)
            src_det, tgt_det = str(count), number_words(count)
        elif kind == "a":
            first_word = adjectives[0][0] if adjectives else src_sg
            src_det = "an" if first_word[0] in "aeiou" else "a"
            tgt_det = {"a": "un", "e": "una"}[gender] + ("on" if acc and gender == "a" else acc)
        else:
            src_det = {"the": "the", "some": "some", "this": "these" if plural else "this"}[kind]
            tgt_det = DETERMINERS[kind][gender, number] + acc

        noun_src = src_pl if plural else src_sg
        noun_tgt = stem + (("en" if gender == "a" else "s") if plural else "")
        if kind == "number" and acc:  # no determiner to carry the case, so the noun does
            noun_tgt += "on"
        adj_ending = ("o" if gender == "a" else "a") + ("j" if plural else "")
        src = " ".join([src_det] + [a for a, _ in adjectives] + [noun_src])
        tgt = " ".join([tgt_det, noun_tgt] + [t + adj_ending for _, t in reversed(adjectives)])
        return Phrase(src, tgt), plural

    def subject(self) -> Subject:
        if self.rng.random() < 0.35:
            src, _, tgt, _, person = self.rng.choice(PRONOUNS)
            return Subject(src, tgt, person)
        phrase, plural = self.noun_phrase("nom")
        return Subject(phrase.src, phrase.tgt, "3pl" if plural else "3sg")

    def object(self) -> Phrase:
        if self.rng.random() < 0.2:
            _, src, _, tgt, _ = self.rng.choice(PRONOUNS)
            return Phrase(src, tgt)
        return self.noun_phrase("acc")[0]

    def place(self) -> Phrase | None:
        if self.rng.random() < 0.55:
            return None
        prep_src, prep_tgt = self.rng.choice(PREPOSITIONS)
        phrase, _ = self.noun_phrase("nom")
        return Phrase(f"{prep_src} {phrase.src}", f"{phrase.tgt} {prep_tgt}")

    def verb(self, subject: Subject, transitive: bool) -> Phrase:
        base, third, past, stem = self.rng.choice(TRANSITIVE if transitive else INTRANSITIVE)
        tense = self.rng.choice(["past", "present", "future"])
        negated = self.rng.random() < 0.2
        third_person = subject.person == "3sg"
        if tense == "future":
            src = f"will not {base}" if negated else f"will {base}"
        elif tense == "past":
            src = f"did not {base}" if negated else past
        elif negated:
            src = f"{'does' if third_person else 'do'} not {base}"
        else:
            src = third if third_person else base
        tgt = stem + TENSE_SUFFIX[tense] + PERSON_SUFFIX[subject.person]
        return Phrase(src, ("ne " if negated else "") + tgt)

    def clause(self) -> Phrase:
        subject = self.subject()
        transitive = self.rng.random() < 0.75
        verb = self.verb(subject, transitive)
        obj = self.object() if transitive else None
        place = self.place()
        src = [subject.src, verb.src] + ([obj.src] if obj else []) + ([place.src] if place else [])
        tgt = [subject.tgt] + ([place.tgt] if place else []) + ([obj.tgt] if obj else []) + [verb.tgt]
        return Phrase(" ".join(src), " ".join(tgt))

    def sentence(self) -> Phrase:
        main = self.clause()
        if self.rng.random() < 0.7:
            return Phrase(main.src + ".", main.tgt + ".")
        conj_src, conj_tgt, moves_first = self.rng.choice(CONJUNCTIONS)
        other = self.clause()
        if moves_first:
            return Phrase(f"{main.src} {conj_src} {other.src}.", f"{other.tgt} {conj_tgt}, {main.tgt}.")
        return Phrase(f"{main.src} {conj_src} {other.src}.", f"{main.tgt} {conj_tgt} {other.tgt}.")


def _capitalise(text: str) -> str:
    return text[0].upper() + text[1:]


def generate(n: int, seed: int = 1234) -> list[tuple[str, str]]:
    """n distinct (source, target) pairs, the same for the same (n, seed) everywhere."""
    gen = Generator(seed)
    seen: set[str] = set()
    pairs = []
    while len(pairs) < n:
        phrase = gen.sentence()
        if phrase.src in seen:
            continue
        seen.add(phrase.src)
        pairs.append((_capitalise(phrase.src), _capitalise(phrase.tgt)))
    return pairs


DEFAULT_SIZES = {"train": 40000, "valid": 500, "test": 1000}


def write_demo_corpus(directory: str | Path, sizes: dict[str, int] | None = None, seed: int = 1234) -> Path:
    """Writes {split}.src / {split}.tgt for the fixed split; returns the directory.

    The splits are consecutive slices of one de-duplicated stream, so no test sentence is in train.
    Files that already hold the same corpus are left alone.
    """
    sizes = dict(DEFAULT_SIZES if sizes is None else sizes)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    pairs = generate(sum(sizes.values()), seed)
    start = 0
    for split, size in sizes.items():
        chunk = pairs[start:start + size]
        start += size
        for side, index in (("src", 0), ("tgt", 1)):
            text = "".join(pair[index] + "\n" for pair in chunk)
            path = directory / f"{split}.{side}"
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                path.write_text(text, encoding="utf-8")
    return directory
