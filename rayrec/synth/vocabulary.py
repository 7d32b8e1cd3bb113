"""Words the synthetic items are written with: one vocabulary per topic, shared filler, clickbait wording.

Topic words are disjoint across topics, so an item's text says which topic it is about; filler words are
shared by every topic and carry no signal; clickbait wording appears (almost) only on clickbait items.
Sixteen topics are hand-written; a world with more topics gets pronounceable pseudo-words for the rest,
generated from its seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rayrec.synth.hashing import Stream


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


TOPIC_WORDS: dict[str, tuple[str, ...]] = {
    "space": _words(
        "astronaut rocket orbit galaxy nebula telescope asteroid comet satellite planet lunar mars "
        "jupiter spacecraft launchpad cosmos supernova meteor eclipse gravity exoplanet spacewalk "
        "capsule observatory constellation quasar stardust crater saturn payload"
    ),
    "cooking": _words(
        "recipe oven saucepan garlic simmer braise dough pastry skillet basil roast marinade whisk "
        "broth risotto noodle butter flour caramel sourdough spatula seasoning grill saffron "
        "casserole dumpling vinaigrette ginger omelette knead"
    ),
    "finance": _words(
        "stock dividend portfolio inflation bond mortgage yield equity broker investor pension budget "
        "savings credit loan tax crypto bitcoin ledger asset valuation recession currency banking "
        "shareholder earnings audit debt liquidity forex"
    ),
    "football": _words(
        "striker goalkeeper penalty midfielder offside referee stadium league championship dribble "
        "tackle kickoff defender coach transfer derby header corner freekick trophy fixture winger "
        "playoff scoreline jersey captain hattrick substitute pitch supporters"
    ),
    "music": _words(
        "guitar melody chorus album drummer symphony violin concert lyrics rhythm piano orchestra "
        "bassline vinyl playlist singer tempo harmony saxophone remix ballad encore soprano gig jazz "
        "opera cello chord songwriter acoustic"
    ),
    "travel": _words(
        "passport airport backpack itinerary hostel luggage beach island cruise resort sightseeing "
        "souvenir visa flight journey destination trek hotel roadtrip guidebook tourist landmark "
        "ferry village coastline boarding lagoon excursion vacation layover"
    ),
    "gardening": _words(
        "compost seedling tulip pruning greenhouse soil fertilizer shrub hedge perennial mulch trowel "
        "orchard bulb rose weeding lawn harvest sprout bonsai irrigation flowerbed hydrangea "
        "pollinator lavender watering topsoil cuttings allotment wheelbarrow"
    ),
    "computing": _words(
        "software algorithm compiler database python server laptop processor keyboard kernel "
        "debugging encryption network cloud programmer bandwidth firmware router linux cache byte "
        "browser javascript cybersecurity terabyte motherboard opensource backend api startup"
    ),
    "fitness": _words(
        "workout treadmill dumbbell cardio squat protein marathon yoga pilates stretching gym pushup "
        "calories endurance muscle jogging kettlebell barbell trainer hydration deadlift triathlon "
        "posture aerobics stamina abs metabolism physio cycling sprint"
    ),
    "history": _words(
        "empire dynasty medieval pharaoh castle revolution archive ancient monarch treaty manuscript "
        "knight archaeology colonial roman viking pyramid battlefield chronicle renaissance emperor "
        "crusade artifact parliament samurai fortress relic siege monument civilization"
    ),
    "fashion": _words(
        "runway designer couture denim handbag sneakers tailoring fabric silk wardrobe boutique "
        "stiletto jacket outfit vogue catwalk accessories embroidery linen knitwear blazer sequin "
        "hemline lookbook stylist sunglasses trench cashmere velvet seamstress"
    ),
    "gaming": _words(
        "console gamer multiplayer quest controller esports arcade speedrun joystick boss loot "
        "respawn sandbox rpg shooter pixel streamer leaderboard dungeon avatar glitch expansion "
        "achievement platformer mod headset cheatcode lobby checkpoint respec"
    ),
    "cinema": _words(
        "director screenplay blockbuster trailer premiere actor actress sequel cinematography "
        "documentary studio oscar casting soundtrack popcorn thriller comedy animation screening "
        "villain heroine boxoffice filmmaker scene horror stuntman critic reel projector western"
    ),
    "wildlife": _words(
        "elephant tiger rainforest savanna dolphin eagle migration predator habitat conservation wolf "
        "gorilla coral penguin owl reptile safari poaching leopard butterfly whale hedgehog burrow "
        "flock tundra biodiversity otter crocodile rhino nocturnal"
    ),
    "motoring": _words(
        "engine sedan horsepower gearbox turbo hatchback tyres mileage dashboard convertible torque "
        "exhaust diesel hybrid roadster mechanic brakes chassis motorway carburettor overtaking "
        "ignition suspension windscreen garage rally transmission pickup odometer supercar"
    ),
    "painting": _words(
        "canvas watercolor brushstroke easel palette portrait landscape acrylic sketch gallery "
        "impressionism fresco pigment mural gouache charcoal abstract masterpiece exhibition sculptor "
        "pastel varnish collage perspective shading artist curator primer linocut oilpaint"
    ),
}
"""Hand-written vocabularies, in the order topics are assigned (a world with T <= 16 topics uses the first T)."""

FILLER_WORDS = _words(
    "the a an and with for about from into of on in new this our your how why guide story notes look "
    "week today inside simple complete practical first everyday real more better small big after "
    "before around plus best local modern classic quick"
)
"""Words every topic uses: no topic signal."""

CLICKBAIT_WORDS = (
    *_words(
        "shocking unbelievable insane jaw-dropping secret mind-blowing epic outrageous viral must-see "
        "incredible stunning crazy hilarious terrifying banned exposed"
    ),
    "gone wrong",
    "nobody tells you",
    "what happens next",
    "the truth about",
    "this one trick",
    "will change your life",
    "before it's deleted",
)
"""Clickbait wording mixed into clickbait items' descriptions."""

CLICKBAIT_OPENERS = (
    "you won't believe",
    "top 10",
    "shocking",
    "this is why",
    "what happens next will surprise you",
    "the secret of",
    "7 reasons",
    "nobody talks about",
    "insane",
    "the truth about",
    "must see",
    "watch until the end",
)
"""How clickbait titles begin."""

NEUTRAL_OPENERS = (
    "a guide to",
    "notes on",
    "understanding",
    "an introduction to",
    "inside",
    "the basics of",
    "review of",
    "lessons from",
    "a look at",
    "field notes on",
)
"""How some ordinary titles begin (no clickbait signal)."""

WORDS_PER_GENERATED_TOPIC = 30
_SYLLABLES = [
    "ba",
    "be",
    "bi",
    "bo",
    "bu",
    "da",
    "de",
    "di",
    "do",
    "du",
    "fa",
    "fe",
    "fi",
    "fo",
    "ka",
    "ke",
    "ki",
    "ko",
    "ku",
    "la",
    "le",
    "li",
    "lo",
    "lu",
    "ma",
    "me",
    "mi",
    "mo",
    "mu",
    "na",
    "ne",
    "ni",
    "no",
    "nu",
    "ra",
    "re",
    "ri",
    "ro",
    "ru",
    "sa",
    "se",
    "si",
    "so",
    "su",
    "ta",
    "te",
    "ti",
    "to",
    "tu",
    "va",
    "ve",
    "vi",
    "vo",
    "zo",
    "zu",
]
_CODAS = ("", "", "", "n", "r", "l", "s", "x", "m")


def _title_case(text: str) -> str:
    # str.title() would write "Won'T"; capitalise each space-separated word instead.
    return " ".join(word[:1].upper() + word[1:] for word in text.split(" "))


def _generated_topics(first: int, count: int, seed: int, taken: set[str]) -> dict[str, tuple[str, ...]]:
    """``count`` extra topics of pseudo-words (``topic16`` ...), disjoint from ``taken`` and each other."""
    rng = np.random.default_rng([seed, Stream.VOCABULARY])
    topics: dict[str, tuple[str, ...]] = {}
    for t in range(first, first + count):
        words: list[str] = []
        while len(words) < WORDS_PER_GENERATED_TOPIC:
            syllables = rng.choice(_SYLLABLES, size=int(rng.integers(2, 4)))
            word = "".join(syllables) + str(rng.choice(_CODAS))
            if word not in taken:
                taken.add(word)
                words.append(word)
        topics[f"topic{t}"] = tuple(words)
    return topics


@dataclass(frozen=True)
class Vocabulary:
    """All tokens of a world, in one table with four written forms per token.

    Token ``k`` (0 <= k < ``size``) is written as ``forms[variant * size + k]`` where the variant is
    :attr:`PLAIN`, :attr:`SENTENCE_START` ("Shocking"), :attr:`TITLE` ("You Won't Believe") or
    :attr:`SENTENCE_END` ("orbit."). Composing text is then integer arithmetic plus one Arrow ``take``.
    """

    PLAIN = 0
    SENTENCE_START = 1
    TITLE = 2
    SENTENCE_END = 3

    topic_names: tuple[str, ...]
    """[T] topic names (also the items' ``category``)."""
    forms: tuple[str, ...]
    """[4 * size] every token in its four written forms."""
    size: int
    """Number of distinct tokens."""
    topic_offset: np.ndarray
    """[T] int64 token id of each topic's first word."""
    topic_count: np.ndarray
    """[T] int64 number of words of each topic."""
    filler: tuple[int, int]
    """(first token id, count) of the filler words."""
    clickbait: tuple[int, int]
    """(first token id, count) of the clickbait words."""
    clickbait_openers: tuple[int, int]
    """(first token id, count) of the clickbait title openers."""
    neutral_openers: tuple[int, int]
    """(first token id, count) of the ordinary title openers."""

    @classmethod
    def build(cls, num_topics: int, seed: int) -> Vocabulary:
        """The vocabulary of a world with ``num_topics`` topics (pseudo-words past the hand-written 16)."""
        topics = dict(list(TOPIC_WORDS.items())[:num_topics])
        if num_topics > len(TOPIC_WORDS):
            taken = {w for words in TOPIC_WORDS.values() for w in words} | set(FILLER_WORDS)
            topics |= _generated_topics(len(TOPIC_WORDS), num_topics - len(TOPIC_WORDS), seed, taken)
        tokens: list[str] = []
        offsets, counts = [], []
        for words in topics.values():
            offsets.append(len(tokens))
            counts.append(len(words))
            tokens.extend(words)
        groups = []
        for group in (FILLER_WORDS, CLICKBAIT_WORDS, CLICKBAIT_OPENERS, NEUTRAL_OPENERS):
            groups.append((len(tokens), len(group)))
            tokens.extend(group)
        forms = (
            tokens
            + [t[:1].upper() + t[1:] for t in tokens]
            + [_title_case(t) for t in tokens]
            + [t + "." for t in tokens]
        )
        return cls(
            topic_names=tuple(topics),
            forms=tuple(forms),
            size=len(tokens),
            topic_offset=np.asarray(offsets, dtype=np.int64),
            topic_count=np.asarray(counts, dtype=np.int64),
            filler=groups[0],
            clickbait=groups[1],
            clickbait_openers=groups[2],
            neutral_openers=groups[3],
        )

    def topic_words(self, topic: int) -> list[str]:
        """The words of one topic."""
        start = int(self.topic_offset[topic])
        return list(self.forms[start : start + int(self.topic_count[topic])])

    def clickbait_wording(self) -> list[str]:
        """Every clickbait word and opener (plain form)."""
        words = []
        for start, count in (self.clickbait, self.clickbait_openers):
            words.extend(self.forms[start : start + count])
        return words
