"""General English text for the demo, generated from a small grammar (nothing downloaded or shipped).

Documents are short stories: a protagonist, a place, a few events and some dialogue, built from
sentence templates over a vocabulary of several hundred words. The text is grammatical, varied and
has long-range structure (names and pronouns persist through a story), so a tiny model learns it
well below a unigram baseline. It contains numbers (counts, ages, times) but no arithmetic: math
is what the domain expert adds. The same seed always gives the same text on every machine.
"""

from __future__ import annotations

import random
from typing import Callable, Iterator, List, Sequence, Tuple

__all__ = ["english_documents", "plural", "VOCABULARY", "PEOPLE", "THINGS", "FOODS", "PLACES"]

# (name, subject pronoun, object pronoun, possessive)
PEOPLE: List[Tuple[str, str, str, str]] = [
    (n, "she", "her", "her")
    for n in "Anna Mia Lucy Emma Rosa Nina Clara Ella Ivy Maya Lena Sara Julia Alice Hanna Zoe "
    "Grace Ruth Olivia Nora Eva Lily Iris Tessa".split()
] + [
    (n, "he", "him", "his")
    for n in "Tom Ben Sam Leo Max Jack Noah Finn Oscar Hugo Theo Paul Luke Adam Omar Ravi "
    "Felix Jonas Ivan Eli Milo Arthur Carl Dan".split()
]
_ANIMALS = (
    "cat dog fox owl horse rabbit mouse duck goat sheep cow bird frog bear deer wolf pig hen "
    "squirrel turtle crow swan hedgehog badger lamb pony"
).split()
THINGS = (
    "ball book kite lamp box hat cup key map boat coat bag drum bell chair table basket clock "
    "shoe blanket bottle ladder rope candle brush bucket pencil letter jar spoon wagon shell "
    "stone feather ribbon scarf umbrella"
).split()
FOODS = "apple bread cake soup pear cheese pie plum carrot melon cookie egg orange grape".split()
PLACES = (
    "park garden forest river market school kitchen library village farm beach hill lake "
    "bakery station harbor meadow castle bridge field barn shop street museum"
).split()
_ADJ = (
    "small big old new red blue green yellow quiet loud happy sad bright dark warm cold soft "
    "heavy light clean dirty tall short round strange lovely tiny huge gentle brave shiny "
    "wooden broken busy sleepy hungry curious"
).split()
_COLORS = "red blue green yellow white black brown gray pink purple orange golden".split()
_FEELINGS = "happy sad tired excited scared proud calm angry surprised glad worried".split()
_WEATHER = [
    "the sun was shining",
    "it was raining",
    "the wind was blowing",
    "snow was falling",
    "the sky was cloudy",
    "the air was warm",
    "a storm was coming",
    "the morning was foggy",
]
_TIMES = [
    "One morning",
    "Later that day",
    "In the evening",
    "At noon",
    "On Sunday",
    "After lunch",
    "Before dinner",
    "That night",
    "The next day",
    "Once upon a time",
    "Last summer",
    "Early in the morning",
    "On a rainy day",
    "In the spring",
    "Every Monday",
]
# (base, past) verbs taking an object
_VERBS: List[Tuple[str, str]] = [
    ("find", "found"),
    ("carry", "carried"),
    ("paint", "painted"),
    ("clean", "cleaned"),
    ("open", "opened"),
    ("fix", "fixed"),
    ("hide", "hid"),
    ("drop", "dropped"),
    ("buy", "bought"),
    ("sell", "sold"),
    ("hold", "held"),
    ("wash", "washed"),
    ("build", "built"),
    ("draw", "drew"),
    ("lose", "lost"),
    ("bring", "brought"),
    ("throw", "threw"),
    ("catch", "caught"),
    ("share", "shared"),
    ("move", "moved"),
]
_MOTION: List[Tuple[str, str]] = [
    ("walk", "walked"),
    ("run", "ran"),
    ("go", "went"),
    ("hurry", "hurried"),
    ("ride", "rode"),
    ("climb", "climbed"),
    ("wander", "wandered"),
    ("march", "marched"),
]
_ANIMAL_ACTS = [
    "was sleeping under a tree",
    "was eating some grass",
    "jumped over the fence",
    "ran across the road",
    "was singing a song",
    "looked at the sky",
    "hid behind a rock",
    "was drinking from the river",
    "chased a butterfly",
    "sat on the wall",
]
_ADVERBS = "slowly quickly carefully quietly happily suddenly finally gently softly".split()
_SAYS = ["said", "asked", "called", "whispered", "shouted", "replied", "laughed"]
_NUMBER_WORDS = "two three four five six seven eight nine ten eleven twelve".split()

VOCABULARY = sorted(
    {p[0] for p in PEOPLE}
    | set(_ANIMALS + THINGS + FOODS + PLACES + _ADJ + _COLORS + _FEELINGS + _ADVERBS)
    | {w for v in _VERBS + _MOTION for w in v}
)
"""Content words of the grammar (for documentation and tests)."""


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def plural(word: str) -> str:
    if word.endswith(("s", "x", "sh", "ch")):
        return word + "es"
    if word.endswith("y") and word[-2] not in "aeiou":
        return word[:-1] + "ies"
    return {"mouse": "mice", "sheep": "sheep", "deer": "deer", "wolf": "wolves"}.get(
        word, word + "s"
    )


class _Story:
    """One story: a protagonist, maybe a friend, and sentence makers that refer to them."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.hero, self.friend = rng.sample(PEOPLE, 2)
        self.place = rng.choice(PLACES)
        self.thing = rng.choice(THINGS)
        self.animal = rng.choice(_ANIMALS)
        self.named = False

    def pick(self, seq: Sequence[str]) -> str:
        return self.rng.choice(seq)

    def who(self) -> str:
        """The protagonist's name the first time and now and then, otherwise a pronoun."""
        if not self.named or self.rng.random() < 0.3:
            self.named = True
            return self.hero[0]
        return self.hero[1].capitalize()

    # Sentence makers: each returns one sentence ending with punctuation.
    def opening(self) -> str:
        r = self.rng
        return (
            f"{self.pick(_TIMES)}, {self.hero[0]} {self.pick(_MOTION)[1]} to the {self.place}. "
            f"{r.choice(['There', 'Outside', 'Nearby'])}, {self.pick(_WEATHER)}."
        )

    def see_animal(self) -> str:
        adj = self.pick(_ADJ)
        return f"{self.who()} saw {_a(adj)} {self.animal} that {self.pick(_ANIMAL_ACTS)}."

    def handle_thing(self) -> str:
        verb = self.pick(_VERBS)[1]
        return f"{self.who()} {self.pick(_ADVERBS)} {verb} the {self.pick(_COLORS)} {self.thing}."

    def count(self) -> str:
        r = self.rng
        n = r.choice(_NUMBER_WORDS) if r.random() < 0.5 else str(r.randint(2, 60))
        things = self.pick(THINGS + FOODS + _ANIMALS)
        return (
            f"In the {self.place} there were {n} {plural(things)}, and {self.hero[1]} looked at "
            "every one."
        )

    def feeling(self) -> str:
        because = self.rng.choice(
            [
                f"the {self.thing} was gone",
                f"the {self.animal} came back",
                f"{self.friend[0]} was late",
                f"the {self.place} was so {self.pick(_ADJ)}",
                f"{self.hero[3]} {self.pick(FOODS)} was still warm",
            ]
        )
        return f"{self.who()} felt {self.pick(_FEELINGS)} because {because}."

    def dialogue(self) -> str:
        r = self.rng
        line = r.choice(
            [
                f"Can we {self.pick(_VERBS)[0]} the {self.thing} together?",
                f"Where is my {self.pick(_ADJ)} {self.thing}?",
                f"Look at that {self.animal}!",
                f"I want to {self.pick(_MOTION)[0]} to the {self.pick(PLACES)}.",
                f"Do you like {plural(self.pick(FOODS))}?",
            ]
        )
        speaker = self.rng.choice([self.hero[0], self.friend[0]])
        if line.endswith("."):
            line = line[:-1] + ","
        return f'"{line}" {self.pick(_SAYS)} {speaker}.'

    def friend_meets(self) -> str:
        f = self.friend
        return (
            f"{self.who()} met {f[0]} near the {self.pick(PLACES)}, and {f[1]} gave "
            f"{self.hero[2]} {_a(self.pick(FOODS))}."
        )

    def age(self) -> str:
        r = self.rng
        return (
            f"{self.hero[0]} was {r.randint(4, 90)} years old and lived in "
            f"{_a(self.pick(_ADJ))} house near the {self.pick(PLACES)}."
        )

    def time_of_day(self) -> str:
        r = self.rng
        return (
            f"At {r.randint(1, 12)} o'clock, {self.hero[1]} {self.pick(_MOTION)[1]} home "
            f"{self.pick(_ADVERBS)}."
        )

    def closing(self) -> str:
        return self.rng.choice(
            [
                f"In the end, {self.hero[0]} and {self.friend[0]} were {self.pick(_FEELINGS)}.",
                f"That was the day {self.hero[0]} found the {self.pick(_ADJ)} {self.thing}.",
                f"{self.hero[0]} went to bed early and dreamed about the {self.animal}.",
                f"The {self.animal} never came back to the {self.place}.",
            ]
        )


_MIDDLE: List[Callable[[_Story], str]] = [
    _Story.see_animal,
    _Story.handle_thing,
    _Story.count,
    _Story.feeling,
    _Story.dialogue,
    _Story.friend_meets,
    _Story.age,
    _Story.time_of_day,
]


def _story(rng: random.Random) -> str:
    s = _Story(rng)
    sentences = [s.opening()]
    for _ in range(rng.randint(3, 8)):
        sentences.append(rng.choice(_MIDDLE)(s))
    sentences.append(s.closing())
    return " ".join(sentences)


def english_documents(num_docs: int, *, seed: int = 0) -> Iterator[str]:
    """``num_docs`` stories of one to three paragraphs, deterministic for a given ``seed``."""
    rng = random.Random(f"english-{seed}")
    for _ in range(num_docs):
        yield "\n\n".join(_story(rng) for _ in range(rng.randint(1, 3)))
