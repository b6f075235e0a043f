"""Phrases and attribute words of pedestrian descriptions: a deterministic, offline chunker.

ACSA aligns caption *phrases* ("a red down jacket", "black jeans", "a white handbag") with
image regions, and UCFA masks *attribute words* (colours, patterns, garments, accessories,
hair, build) for reconstruction; both read them from here, so they agree. General-purpose
parsers (spaCy, NLTK) are trained on news text, need model downloads and mis-tag the
run-on, misspelt captions of CUHK-PEDES, ICFG-PEDES and RSTPReid; the vocabulary of these
captions is small and closed, so a lexicon does better and is exact to test.

A phrase is a maximal run of words made of optional determiners and modifiers (colour,
pattern, material, length and fit words) ending in a head noun (a garment, footwear, a bag,
an accessory, hair, or a person noun when a build word precedes it: "a slim woman"). Commas,
"and", "with" and any other word end a run. British and American spellings and the common
misspellings of these data sets are in the lexicon ("grey"/"gray", "t shirt"/"tshirt",
"trousers"/"pants", "jumper", "sneackers"). A caption where nothing is found is one phrase of its own
(``Phrases.fallback``), so it is never dropped; callers count those.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

COLOURS = frozenset("""
black white grey gray red blue green yellow orange purple pink brown beige khaki navy
maroon burgundy tan cream golden gold silver violet cyan turquoise olive dark light pale
bright multicolored multicoloured colorful colourful blackish whitish greyish grayish
reddish bluish greenish yellowish brownish pinkish purplish blond blonde fair
""".split())
PATTERNS = frozenset("""
striped stripped stripe plaid checked checkered chequered floral flowered spotted dotted
polka polka-dot printed patterned camouflage camo graphic plain lettered stripy star circle
square triangle
""".split())
MATERIALS = frozenset("""
denim jean leather cotton wool woollen woolen knit knitted down silk canvas fur furry
suede nylon lace velvet fleece padded puffy puffer
""".split())
SHAPES = frozenset("""
long short sleeveless long-sleeved short-sleeved long-sleeve short-sleeve sleeved
knee-length ankle-length mid-length tight loose baggy big small large little thick thin
high low high-heeled flat slim skinny wide fitted oversized hooded zip zip-up button-up
curly wavy straight bald running tennis sports school messenger shoulder hand ankle trench
winter rain baseball
""".split())
GARMENTS = frozenset("""
jacket jackets coat coats shirt shirts t-shirt t-shirts tshirt tshirts tee top tops blouse
sweater sweaters jumper hoodie sweatshirt cardigan vest waistcoat dress dresses skirt
skirts jeans jean pants trousers trouser shorts leggings tights suit uniform overalls
windbreaker parka blazer tank polo robe gown sleeves sleeve capris joggers sweatpants
slacks pullover overcoat
""".split())
FOOTWEAR = frozenset("""
shoes shoe sneakers sneaker sneackers trainers boots boot sandals sandal heels slippers
flats loafers footwear
""".split())
BAGS = frozenset("""
bag bags backpack backpacks handbag handbags purse satchel suitcase luggage tote
briefcase knapsack rucksack shoulderbag
""".split())
ACCESSORIES = frozenset("""
hat hats cap caps glasses sunglasses spectacles scarf belt watch umbrella mask gloves
necklace helmet headphones earphones bracelet hood logo print stripes stripe earrings
beanie eyeglasses
""".split())
HAIR = frozenset("hair ponytail braid braids bun bangs beard scalp".split())
# Build and age: attributes of the person, so a phrase when they precede a person noun
BUILD = frozenset("""
slim thin skinny slender heavy heavyset chubby fat overweight stocky stout tall short
muscular plump medium-build medium-built young old elderly middle-aged teenage
""".split())
PERSON = frozenset("""
man men woman women person people lady ladies girl girls boy boys guy guys gentleman
pedestrian he she him her his hers they individual male female adult child kid
""".split())
DETERMINERS = frozenset("a an the his her their some one two pair of".split())
# Misspellings of these data sets, and two-word forms read as one word; the caption itself
# is never rewritten, so every span points at its own characters.
SPELLINGS = {"sneackers": "sneakers", "trowsers": "trousers", "greay": "grey",
             "balck": "black", "backback": "backpack", "jens": "jeans", "bage": "beige",
             "tshirt": "t-shirt", "tshirts": "t-shirts", "colour": "color"}
COMPOUNDS = {("t", "shirt"): "t-shirt", ("tee", "shirt"): "t-shirt",
             ("long", "sleeve"): "long-sleeve", ("short", "sleeve"): "short-sleeve",
             ("long", "sleeved"): "long-sleeved", ("short", "sleeved"): "short-sleeved"}
# Words that continue a run of modifiers without being attributes ("navy blue colour jumper")
LINKS = frozenset("color colored coloured".split())

MODIFIERS = COLOURS | PATTERNS | MATERIALS | SHAPES
HEADS = GARMENTS | FOOTWEAR | BAGS | ACCESSORIES | HAIR
ATTRIBUTES = MODIFIERS | HEADS | BUILD
_WORD = re.compile(r"[a-z]+(?:-[a-z]+)*")
_BREAK = re.compile(r"[,.;:!?()]")


@dataclass(frozen=True)
class Phrase:
    text: str                                  # the phrase as it stands in the caption
    start: int                                 # its character span in the caption
    end: int
    attributes: tuple[tuple[int, int], ...]    # character spans of its attribute words

    def attribute_words(self, caption: str) -> list[str]:
        return [caption[s:e].lower() for s, e in self.attributes]


@dataclass(frozen=True)
class Phrases:
    phrases: tuple[Phrase, ...]
    fallback: bool               # nothing was found: the whole caption is the one phrase


def _words(caption: str) -> tuple[list[str], list[tuple[int, int]]]:
    """Normalised words and their character spans in the caption."""
    found = [(m.group(), m.start(), m.end()) for m in _WORD.finditer(caption.lower())]
    words, spans, i = [], [], 0
    while i < len(found):
        word, start, end = found[i]
        if i + 1 < len(found) and (word, found[i + 1][0]) in COMPOUNDS:
            word, end = COMPOUNDS[(word, found[i + 1][0])], found[i + 1][2]
            i += 1
        words.append(SPELLINGS.get(word, word))
        spans.append((start, end))
        i += 1
    return words, spans


def _is_head(words: list[str], i: int) -> bool:
    """A head noun ends a phrase: a garment, footwear, bag, accessory or hair word, a person
    noun right after a build or age word ("a slim woman"), or "head" after "bald"."""
    prev = words[i - 1] if i > 0 else ""
    return (words[i] in HEADS or (words[i] in PERSON and prev in BUILD)
            or (words[i] == "head" and prev == "bald"))


def extract_phrases(caption: str, max_phrases: int | None = None) -> Phrases:
    """The caption's phrases in order (at most ``max_phrases``)."""
    words, spans = _words(caption)
    found: list[Phrase] = []
    run: list[int] = []  # indices of the words of the phrase being built
    predicate = False    # "her hair is short black": modifiers after the head belong to it

    def close() -> None:
        nonlocal predicate
        heads = [k for k, i in enumerate(run) if _is_head(words, i)]
        if heads:  # the run up to its last head noun (or its predicate's last modifier)
            kept = run if predicate else run[:heads[-1] + 1]
            start, end = spans[kept[0]][0], spans[kept[-1]][1]
            attrs = tuple(spans[i] for i in kept if words[i] in ATTRIBUTES)
            found.append(Phrase(caption[start:end], start, end, attrs))
        run.clear()
        predicate = False

    for i, word in enumerate(words):
        if run and _BREAK.search(caption[spans[i - 1][1]:spans[i][0]]):
            close()  # "a red coat, black jeans": punctuation ends a phrase
        nxt = words[i + 1] if i + 1 < len(words) else ""
        if predicate and word not in MODIFIERS and word not in LINKS and word != "and":
            close()
        if word in DETERMINERS or word in MODIFIERS or word in BUILD:
            if run and _is_head(words, run[-1]) and not predicate:
                close()  # "a red coat black jeans": a new phrase begins
            run.append(i)
        elif _is_head(words, i):
            run.append(i)
        elif word in ("and", "or") and run and words[run[-1]] in MODIFIERS and nxt in MODIFIERS:
            run.append(i)  # "black and white striped shirt" is one phrase
        elif word in LINKS and run and words[run[-1]] in MODIFIERS:
            run.append(i)
        elif (word in LINKS or word in ("is", "are")) and run and _is_head(words, run[-1]) \
                and nxt in MODIFIERS:  # "hair is short black", "a tshirt colored orange"
            run.append(i)
            predicate = True
        else:
            close()
    close()
    if not found:
        stripped = caption.strip()
        offset = caption.find(stripped) if stripped else 0
        return Phrases((Phrase(stripped, offset, offset + len(stripped), ()),), True)
    return Phrases(tuple(found[:max_phrases] if max_phrases else found), False)


def attribute_words(caption: str) -> list[str]:
    """The caption's attribute words (colours, patterns, materials, shapes, garments,
    footwear, bags, accessories, hair, build) as they stand in it, in order; never a person
    noun or a function word. What UCFA's attribute masking may mask."""
    return [w for p in extract_phrases(caption).phrases for w in p.attribute_words(caption)]
