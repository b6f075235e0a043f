"""The caption grammar of SynthPedes.

A caption describes only what the image's view shows (no logo or glasses from the back, no
backpack body from the front), draws every phrase from several synonyms and templates in
varying order, and leaves details out at random, as real annotators do. Each caption comes
with the attribute words it contains (the ground truth for attribute masking) and the
attribute values it states, ``{field: value}`` of ``Identity`` (the ground truth of how
many people a caption fits: a vague one fits many).
"""

from __future__ import annotations

import numpy as np

from .attributes import Identity

_GENDER = {
    "man": ["man", "guy", "male", "gentleman", "young man", "person"],
    "woman": ["woman", "lady", "female", "girl", "young woman", "person"],
}
_BUILD = {"slim": ["slim", "thin", "skinny"], "average": ["", "", "medium-built"],
          "heavy": ["heavy", "chubby", "heavyset", "stout"]}
_COLOUR_SYN = {"gray": ["gray", "grey"], "navy": ["navy", "navy blue", "dark blue"],
               "beige": ["beige", "tan", "khaki"], "blonde": ["blonde", "blond", "fair"],
               "purple": ["purple", "violet"]}
_UPPER = {"t-shirt": ["t-shirt", "tee", "t shirt"], "shirt": ["shirt", "button-up shirt"],
          "jacket": ["jacket", "zip jacket"], "coat": ["coat", "long coat", "overcoat"],
          "sweater": ["sweater", "jumper", "pullover"], "hoodie": ["hoodie", "hooded sweatshirt"]}
_LOWER = {"trousers": ["trousers", "pants", "slacks"], "jeans": ["jeans", "denim jeans"],
          "shorts": ["shorts", "short pants"], "skirt": ["skirt", "short skirt"]}
_SHOES = {"sneakers": ["sneakers", "trainers", "running shoes"], "boots": ["boots", "ankle boots"],
          "shoes": ["shoes", "flat shoes"]}
_HAT = {"cap": ["cap", "baseball cap"], "beanie": ["beanie", "knit hat"]}
_PATTERN = {"striped": ["striped", "stripy"], "checked": ["checked", "plaid", "checkered"],
            "dotted": ["polka-dot", "dotted", "spotted"]}
_WEAR = ["is wearing", "wears", "is dressed in", "has on", "is in"]
_INTRO = ["A {b}{g}", "The {b}{g}", "This {b}{g}", "A {b}{g} walking down the street",
          "The {b}{g} in the picture", "A {b}{g} who is walking"]


class _Phrases:
    """Collects the attribute words of every phrase it builds, and what they state."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.words: list[str] = []
        self.mentions: dict[str, object] = {}

    def pick(self, options: list[str]) -> str:
        return options[int(self.rng.integers(len(options)))]

    def attr(self, word: str, synonyms: dict[str, list[str]] | None = None,
             key: str | None = None, value: object = None) -> str:
        """A word naming an attribute value; recorded as an attribute word of the caption,
        and, with ``key``, as stating ``key = value`` (``word`` unless given). Synonyms that
        say nothing ("person", an empty build) state nothing."""
        choice = self.pick(synonyms[word]) if synonyms and word in synonyms else word
        self.words.extend(choice.split())
        if key is not None and choice and choice != "person":
            self.state(key, word if value is None else value)
        return choice

    def state(self, key: str, value: object) -> None:
        """Records that the caption states the identity's ``key`` (its words said so)."""
        self.mentions[key] = value

    def colour(self, name: str, key: str) -> str:
        return self.attr(name, _COLOUR_SYN, key)


def _upper(ph: _Phrases, i: Identity) -> str:
    colour = ph.colour(i.upper_colour, "upper_colour")
    noun = ph.attr(i.upper_type, _UPPER, "upper_type")
    pattern = ""
    if i.upper_pattern != "plain":
        if ph.rng.random() < 0.5:
            pattern = ph.attr(i.upper_pattern, _PATTERN, "upper_pattern") + " "
        else:
            ph.state("upper_pattern", i.upper_pattern)
            noun += {"striped": " with {} stripes", "checked": " with a {} check",
                     "dotted": " with {} dots"}[i.upper_pattern].format(
                ph.colour(i.pattern_colour, "pattern_colour"))
    sleeve = ""
    if i.upper_type in ("t-shirt", "shirt", "sweater") and ph.rng.random() < 0.6:
        if ph.rng.random() < 0.5:
            sleeve = ph.attr(i.sleeves, key="sleeves") + "-sleeved "
        else:
            noun += f" with {ph.attr(i.sleeves, key='sleeves')} sleeves"
    return f"a {sleeve}{pattern}{colour} {noun}"


def _lower(ph: _Phrases, i: Identity) -> str:
    art = "a " if i.lower_type == "skirt" else ""
    return f"{art}{ph.colour(i.lower_colour, 'lower_colour')} {ph.attr(i.lower_type, _LOWER, 'lower_type')}"


def _shoes(ph: _Phrases, i: Identity) -> str:
    return f"{ph.colour(i.shoe_colour, 'shoe_colour')} {ph.attr(i.shoe_type, _SHOES, 'shoe_type')}"


def _hair(ph: _Phrases, i: Identity) -> str:
    if i.hair_style == "bald":
        return f"a {ph.attr('bald', key='hair_style')} {ph.pick(['head', 'scalp'])}"
    c = ph.attr(i.hair_colour, _COLOUR_SYN, "hair_colour")
    return {"short": f"short {c} hair", "long": f"long {c} hair",
            "ponytail": f"{c} hair tied in a ponytail", "curly": f"curly {c} hair"}[
        i.hair_style].replace(i.hair_style, ph.attr(i.hair_style, key="hair_style"), 1)


def _bag(ph: _Phrases, i: Identity, view: str) -> str | None:
    if i.bag == "none":
        return None
    c = ph.colour(i.bag_colour, "bag_colour")
    if i.bag == "backpack":
        noun = ph.attr("backpack", {"backpack": ["backpack", "rucksack", "school bag"]}, "bag")
        if view == "front":
            return f"the straps of a {c} {noun} on {ph.pick(['the', 'both'])} shoulders"
        return ph.pick([f"a {c} {noun} on the back", f"a {c} {noun}"])
    if i.bag == "handbag":
        return f"a {c} {ph.attr('handbag', {'handbag': ['handbag', 'purse', 'hand bag']}, 'bag')}"
    form = int(ph.rng.integers(3))
    if form == 0:
        return f"a {c} {ph.attr('shoulder', key='bag', value=i.bag)} bag"
    if form == 1:
        return f"a {c} {ph.attr('bag', key='bag', value=i.bag)} over one shoulder"
    return f"a {c} {ph.attr('messenger', key='bag', value=i.bag)} bag"


def _detail(ph: _Phrases, i: Identity, view: str) -> str | None:
    if i.detail == "logo" and view == "front":
        ph.state("detail", "logo")
        return (f"a {ph.colour(i.logo_colour, 'logo_colour')} {ph.attr(i.logo_shape, key='logo_shape')} "
                f"{ph.pick(['logo on the chest', 'printed on the front', 'logo'])}")
    if i.detail == "stripes":
        ph.state("detail", "stripes")
        n = ph.attr(["one", "two", "three"][i.stripe_count - 1], key="stripe_count",
                    value=i.stripe_count)
        noun = ph.attr("stripe" if n == "one" else "stripes")
        return ph.pick([f"{n} white {noun} on each sleeve", f"{n} white {noun} on the sleeves"])
    if i.detail == "belt" and i.lower_type != "skirt" and i.upper_type != "coat":
        return f"a {ph.colour(i.belt_colour, 'belt_colour')} {ph.attr('belt', key='detail')}"
    return None


def make_caption(i: Identity, view: str, rng: np.random.Generator, omit_rate: float = 0.25,
                 brief_rate: float = 0.0) -> tuple[str, list[str], dict[str, object]]:
    """Writes one caption of ``i`` seen from ``view``; returns it, its attribute words and
    the attribute values it states. With ``brief_rate``, that share is a brief caption
    (``brief_caption``)."""
    # the coin is only drawn when brief captions are asked for, so that every data set
    # written before the knob existed stays byte-identical
    if brief_rate > 0 and rng.random() < brief_rate:
        return brief_caption(i, rng)
    ph = _Phrases(rng)
    he, his = ("he", "his") if i.gender == "man" else ("she", "her")
    keep = lambda: rng.random() >= omit_rate  # noqa: E731 - a tiny local coin
    build = ph.attr(i.build, _BUILD, "build") if rng.random() < 0.5 else ""
    gender = ph.attr(i.gender, _GENDER, "gender")
    intro = ph.pick(_INTRO).format(b=f"{build} " if build else "", g=gender)

    worn = [_upper(ph, i)]
    if keep():
        worn.append(_lower(ph, i))
    if keep():
        worn.append(_shoes(ph, i))
    extras: list[str] = []  # "with …" phrases
    if i.hat != "none" and keep():
        hat = ph.attr(i.hat, _HAT, "hat")
        worn.append(f"a {ph.colour(i.hat_colour, 'hat_colour')} {hat}")
    if i.glasses and view != "back" and keep():
        extras.append(ph.attr("glasses", {"glasses": ["glasses", "eyeglasses", "spectacles"]},
                              "glasses", True))
    hair = _hair(ph, i) if keep() else None
    bag = _bag(ph, i, view) if keep() else None
    detail = _detail(ph, i, view) if rng.random() < 0.8 else None
    order = rng.permutation(len(worn))
    worn = [worn[k] for k in order]
    wear = ", ".join(worn[:-1]) + (" and " if len(worn) > 1 else "") + worn[-1]

    sentences = [f"{intro} {ph.pick(_WEAR)} {wear}"]
    tail: list[str] = []
    if hair:
        tail.append(ph.pick([f"{he} has {hair}", f"{his} hair is {hair.replace(' hair', '')}"])
                    if i.hair_style not in ("bald", "ponytail") else f"{he} has {hair}")
    if bag:
        tail.append(ph.pick([f"{he} is carrying {bag}", f"{he} carries {bag}", f"{he} has {bag}"]))
    if detail:
        tail.append(ph.pick([f"there {'are' if 'stripes' in detail else 'is'} {detail}", f"{he} has {detail}", f"you can see {detail}"]))
    if extras:
        tail.append(f"{he} is wearing {' and '.join(extras)}")
    merged = False  # at most one "with …" phrase joins the first sentence
    for k in rng.permutation(len(tail)):
        for prefix in (f"{he} has ", f"{he} is wearing "):
            if not merged and tail[k].startswith(prefix) and rng.random() < 0.3:
                sentences[0] += " with " + tail[k][len(prefix):]
                merged = True
                break
        else:
            sentences.append(tail[k])
    text = ". ".join(s[0].upper() + s[1:] for s in sentences) + "."
    return _articles(text), ph.words, ph.mentions


_BRIEF_WEAR = ["in", "wearing", "dressed in"]


def _brief_item(ph: _Phrases, i: Identity, item: str, coloured: bool) -> str:
    """One item of a brief caption, its colour said only when ``coloured``."""
    def colour(name: str, key: str) -> str:
        return f"{ph.colour(name, key)} " if coloured else ""

    if item == "upper":
        c = colour(i.upper_colour, "upper_colour")
        return f"a {c}{ph.attr(i.upper_type, _UPPER, 'upper_type')}"
    if item == "lower":
        art = "a " if i.lower_type == "skirt" else ""
        c = colour(i.lower_colour, "lower_colour")
        return f"{art}{c}{ph.attr(i.lower_type, _LOWER, 'lower_type')}"
    if item == "shoes":
        c = colour(i.shoe_colour, "shoe_colour")
        return f"{c}{ph.attr(i.shoe_type, _SHOES, 'shoe_type')}"
    if item == "hat":
        c = colour(i.hat_colour, "hat_colour")
        return f"a {c}{ph.attr(i.hat, _HAT, 'hat')}"
    if item == "hair":
        c = ph.attr(i.hair_colour, _COLOUR_SYN, "hair_colour") + " " if coloured else ""
        if i.hair_style == "ponytail":
            return f"a {c}{ph.attr('ponytail', key='hair_style')}"
        return f"{ph.attr(i.hair_style, key='hair_style')} {c}hair"
    c = colour(i.bag_colour, "bag_colour")  # "bag": "a shoulder bag" names it by its first word
    rest = " bag" if i.bag == "shoulder bag" else ""
    return f"a {c}{ph.attr(i.bag.split()[0], key='bag', value=i.bag)}{rest}"


def brief_caption(i: Identity, rng: np.random.Generator) -> tuple[str, list[str], dict[str, object]]:
    """A brief caption: the person and one or two things they wear or carry, each with its
    colour or without ("A man in a jacket.", "The woman wearing black jeans with a
    backpack."), as real annotators sometimes write. Such a caption fits many people, and
    how many depends on what it names, not only on its length: the spread of vagueness that
    issue 25's ambiguity measure needs (docs/results.md, "Brief captions")."""
    ph = _Phrases(rng)
    # the full captions' openings, fillers ("walking down the street") and all: a brief
    # caption's length then says less about how many people it fits
    build = ph.attr(i.build, _BUILD, "build") if rng.random() < 0.5 else ""
    gender = ph.attr(i.gender, _GENDER, "gender")
    worn = ["upper", "lower", "shoes"] + (["hat"] if i.hat != "none" else [])
    carried = (["hair"] if i.hair_style != "bald" else []) + (["bag"] if i.bag != "none" else [])
    options = worn + carried
    chosen = [options[k] for k in sorted(rng.choice(len(options), size=int(rng.integers(1, 3)),
                                                    replace=False))]
    phrases = {item: _brief_item(ph, i, item, bool(rng.random() < 0.5)) for item in chosen}
    on = [phrases[k] for k in chosen if k in worn]
    having = [phrases[k] for k in chosen if k not in worn]
    text = ph.pick(_INTRO).format(b=f"{build} " if build else "", g=gender)
    if on:
        text += f" {ph.pick(_BRIEF_WEAR)} {' and '.join(on)}"
    if having:
        text += f" with {' and '.join(having)}"
    return _articles(text + "."), ph.words, ph.mentions


def _articles(text: str) -> str:
    """Fixes 'a' before a vowel sound ('a orange skirt' -> 'an orange skirt')."""
    words = text.split(" ")
    for k in range(len(words) - 1):
        if words[k] in ("a", "A") and words[k + 1][:1] in "aeiou" and words[k + 1]:
            words[k] += "n"
    return " ".join(words)
