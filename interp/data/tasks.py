"""Built-in task suites, generated from templates so that tests and the demo need no download.

Text suites (`sentiment`, `topic`, `yesno`) put the label in the words. The acoustic controls (`pitch`,
`rate`) put it only in the voice: every transcript is spoken once with each label, so the words carry
no information about it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from interp.data.manifest import Source
from interp.data.text_items import TextItem
from interp.data.tts import EspeakSettings
from interp.errors import DataError

__all__ = ["SUITES", "synthesize_suite"]

_SUBJECTS = ["movie", "film", "restaurant", "meal", "book", "concert", "hotel", "service", "game", "phone",
             "show", "album", "trip", "class", "play", "coffee", "camera", "laptop", "novel", "museum"]
_POSITIVE = ["wonderful", "delightful", "excellent", "brilliant", "fantastic", "lovely", "superb", "charming",
             "great", "amazing", "enjoyable", "beautiful", "moving", "perfect", "impressive"]
_NEGATIVE = ["terrible", "awful", "boring", "dreadful", "disappointing", "horrible", "dull", "painful",
             "poor", "annoying", "bland", "miserable", "sloppy", "tedious", "useless"]
_SENTIMENT_TEMPLATES = [
    "The {s} was {a}.", "I thought the {s} was {a} and {b}.", "What a {a} {s}, I {v} it.",
    "Honestly, this {s} is {a}.", "My friends said the {s} was {a}, and they were right.",
    "Everything about the {s} felt {a}.", "It was a {a}, {b} {s}.", "The new {s} is simply {a}.",
]
_VERB = {1: ["loved", "adored", "enjoyed", "liked"], 0: ["hated", "disliked", "regretted", "could not stand"]}

_TOPICS = {
    "World": [
        "The prime minister of {country} met foreign leaders to discuss the {issue}.",
        "Thousands of people marched in {city} to protest against the new {law}.",
        "Talks between {country} and its neighbours on the {issue} ended without a deal.",
        "The United Nations warned that the {issue} in {country} is getting worse.",
        "Voters in {country} go to the polls on Sunday in a tense {election}.",
    ],
    "Sports": [
        "The {team} beat their rivals {n} to {m} in the {competition} final.",
        "The star striker scored twice as the {team} won the {competition}.",
        "The coach of the {team} resigned after a {n} game losing streak.",
        "She won the {competition} title after a long match on a hot afternoon.",
        "The {team} signed a new goalkeeper before the start of the {competition}.",
    ],
    "Business": [
        "Shares of {company} {moved} {n} percent after the quarterly earnings report.",
        "{company} agreed to buy a smaller rival for {n} billion dollars.",
        "The central bank raised interest rates as {price} prices kept climbing.",
        "Oil prices {moved} as investors worried about {price} demand.",
        "{company} will cut {n} hundred jobs to reduce its costs.",
    ],
    "Sci/Tech": [
        "Researchers unveiled a new {tech} that can {ability}.",
        "{company} released a software update that fixes a serious {flaw}.",
        "Scientists found water on a distant {body} using a space telescope.",
        "A new {tech} chip promises to {ability} while using less power.",
        "Engineers tested a robot that can {ability} without human help.",
    ],
}
_TOPIC_SLOTS = {
    "country": ["France", "Brazil", "India", "Kenya", "Japan", "Canada", "Egypt", "Peru", "Poland", "Vietnam"],
    "city": ["Paris", "Nairobi", "Lima", "Seoul", "Cairo", "Madrid", "Manila", "Warsaw"],
    "issue": ["border dispute", "refugee crisis", "peace process", "trade sanctions", "drought"],
    "law": ["election law", "tax law", "security law", "media law"],
    "election": ["presidential election", "general election", "referendum"],
    "team": ["Lions", "Eagles", "Rangers", "Tigers", "Sharks", "Giants", "Rovers", "Bulls"],
    "competition": ["cup", "league", "championship", "tournament", "open"],
    "company": ["Acme Corporation", "Globex", "Initech", "Northwind", "Vandelay Industries", "Stark Motors"],
    "moved": ["rose", "fell", "jumped", "dropped", "climbed", "slid"],
    "price": ["energy", "food", "housing", "consumer"],
    "tech": ["battery", "processor", "search engine", "smartphone", "solar panel", "language model"],
    "ability": ["charge in minutes", "translate speech in real time", "detect diseases early",
                "store more data", "recognise faces", "run for a week on one charge"],
    "flaw": ["security hole", "privacy bug", "memory leak"],
    "body": ["planet", "moon", "comet", "asteroid"],
}

_CATEGORIES = {
    "animal": ["dog", "horse", "tiger", "rabbit", "eagle", "shark", "camel", "frog", "sheep", "whale"],
    "fruit": ["apple", "banana", "cherry", "mango", "pear", "peach", "lemon", "grape", "plum", "melon"],
    "vehicle": ["car", "bus", "truck", "bicycle", "train", "tractor", "van", "motorcycle", "scooter", "tram"],
    "musical instrument": ["piano", "guitar", "violin", "flute", "trumpet", "drum", "cello", "harp", "banjo", "oboe"],
    "piece of furniture": ["chair", "table", "sofa", "desk", "bed", "wardrobe", "bench", "shelf", "stool", "dresser"],
    "tool": ["hammer", "wrench", "saw", "screwdriver", "drill", "chisel", "shovel", "rake", "axe", "pliers"],
}
_YESNO_TEMPLATES = ["Is a {x} a kind of {c}?", "Would you call a {x} a {c}?", "Is it true that a {x} is a {c}?"]

_NAMES = ["Anna", "Ben", "Carla", "David", "Elena", "Frank", "Grace", "Hugo", "Iris", "James", "Kate", "Leo"]
_NEUTRAL_TEMPLATES = [
    "{name} put the {object} on the {place} this morning.",
    "The {object} is next to the {place} in the kitchen.",
    "{name} walked to the station and bought a ticket.",
    "There is a {object} on the {place} by the window.",
    "{name} opened the door and looked at the {object}.",
    "We moved the {object} to the {place} on Tuesday.",
    "{name} will read the report about the {object} tomorrow.",
    "The train to the city leaves at {hour} o'clock.",
]
_OBJECTS = ["lamp", "box", "chair", "bottle", "letter", "basket", "clock", "bag", "plant", "map"]
_PLACES = ["table", "shelf", "floor", "desk", "counter", "bench"]
_HOURS = ["six", "seven", "eight", "nine", "ten", "eleven"]


def _sentiment(rng: np.random.Generator, label: int) -> tuple[str, tuple[str, ...]]:
    adjectives = _POSITIVE if label == 1 else _NEGATIVE
    a, b = rng.choice(adjectives, size=2, replace=False)
    text = str(rng.choice(_SENTIMENT_TEMPLATES)).format(
        s=rng.choice(_SUBJECTS), a=a, b=b, v=rng.choice(_VERB[label]))
    text = text.replace(" a a", " an a").replace(" a e", " an e").replace(" a i", " an i")
    return text[0].upper() + text[1:], ("negative", "positive")


def _topic(rng: np.random.Generator, label: int) -> tuple[str, tuple[str, ...]]:
    names = tuple(_TOPICS)
    template = str(rng.choice(_TOPICS[names[label]]))
    slots = {key: str(rng.choice(values)) for key, values in _TOPIC_SLOTS.items()}
    slots.update(n=str(rng.integers(2, 9)), m=str(rng.integers(0, 2)))
    return template.format(**slots), names


def _yesno(rng: np.random.Generator, label: int) -> tuple[str, tuple[str, ...]]:
    categories = list(_CATEGORIES)
    category = str(rng.choice(categories))
    if label == 1:
        member = str(rng.choice(_CATEGORIES[category]))
    else:
        other = str(rng.choice([c for c in categories if c != category]))
        member = str(rng.choice(_CATEGORIES[other]))
    text = str(rng.choice(_YESNO_TEMPLATES)).format(x=member, c=category)
    return text.replace(" a a", " an a").replace(" a o", " an o"), ("no", "yes")


def _neutral(rng: np.random.Generator) -> str:
    return str(rng.choice(_NEUTRAL_TEMPLATES)).format(
        name=rng.choice(_NAMES), object=rng.choice(_OBJECTS), place=rng.choice(_PLACES), hour=rng.choice(_HOURS))


def _text_suite(task: str, make: Callable[[np.random.Generator, int], tuple[str, tuple[str, ...]]],
                classes: int, n: int, seed: int) -> list[TextItem]:
    """Balanced labels; transcripts are unique where the templates allow it (up to 50 redraws)."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % classes)
    items, seen = [], set()
    for index, label in enumerate(labels):
        for _ in range(50):
            text, choices = make(rng, int(label))
            if text not in seen:
                break
        seen.add(text)
        items.append(TextItem(id=f"{task}-{index:05d}", task=task, transcript=text, choices=choices,
                              label=int(label), source=Source("builtin", task, str(index))))
    return items


def _voice_suite(task: str, n: int, seed: int) -> list[TextItem]:
    """Pairs: each neutral sentence spoken once per label; only the voice parameter differs by label."""
    if n % 2:
        raise DataError(f"the {task} suite pairs every sentence with both labels: --n must be even, got {n}")
    rng = np.random.default_rng(seed)
    sentences: list[str] = []
    while len(sentences) < n // 2:
        for _ in range(50):
            text = _neutral(rng)
            if text not in sentences:
                break
        sentences.append(text)
    items = []
    for pair, text in enumerate(sentences):
        for label in rng.permutation(2):
            label = int(label)
            base = str(rng.choice(["en-us", "en", "en-gb-x-rp"]))
            if task == "pitch":
                voice = EspeakSettings(voice=f"{base}+{rng.choice(['m1', 'm2', 'm3', 'm4', 'm7'])}",
                                       rate_wpm=int(rng.integers(150, 190)),
                                       pitch=int(rng.integers(75, 100) if label else rng.integers(10, 31)),
                                       pitch_range=int(rng.integers(30, 60)))
                choices = ("low", "high")
            else:
                voice = EspeakSettings(voice=f"{base}+{rng.choice(['m1', 'm3', 'm7', 'f1', 'f2', 'f4'])}",
                                       rate_wpm=int(rng.integers(240, 290) if label else rng.integers(95, 125)),
                                       pitch=int(rng.integers(35, 65)), pitch_range=int(rng.integers(30, 60)))
                choices = ("slow", "fast")
            index = len(items)
            items.append(TextItem(id=f"{task}-{index:05d}", task=task, transcript=text, choices=choices,
                                  label=label, source=Source("builtin", task, f"pair{pair}"),
                                  engine="espeak", voice=voice))
    return items


SUITES: dict[str, str] = {
    "sentiment": "2 classes (negative/positive), label in the words",
    "topic": "4 classes (World/Sports/Business/Sci/Tech, as AG News), label in the words",
    "yesno": "2 classes (no/yes), category-membership facts",
    "pitch": "2 classes (low/high), label only in the espeak pitch; each sentence spoken with both labels",
    "rate": "2 classes (slow/fast), label only in the espeak speaking rate; each sentence spoken with both labels",
}


def synthesize_suite(task: str, *, n: int, seed: int) -> list[TextItem]:
    """The first n items of a built-in suite (seeded). Raises DataError for an unknown suite name."""
    if n <= 0:
        raise DataError(f"--n must be positive, got {n}")
    if task == "sentiment":
        return _text_suite(task, _sentiment, 2, n, seed)
    if task == "topic":
        return _text_suite(task, _topic, 4, n, seed)
    if task == "yesno":
        return _text_suite(task, _yesno, 2, n, seed)
    if task in ("pitch", "rate"):
        return _voice_suite(task, n, seed)
    raise DataError(f"unknown task {task!r}; built-in suites: {', '.join(SUITES)}")
