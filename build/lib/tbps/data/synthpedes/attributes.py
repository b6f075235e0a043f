"""Identity attributes of SynthPedes and how near-twin identities are drawn.

An identity is a fixed combination of attributes. Identities are drawn in *families*: a
base identity and variants that each change one or two attributes, so that a test
identity usually has near-twins in the same split and retrieval is fine-grained.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np

# Colour name -> RGB. Names are the words captions use.
COLOURS: dict[str, tuple[int, int, int]] = {
    "black": (28, 28, 30),
    "white": (235, 235, 230),
    "gray": (128, 128, 132),
    "red": (196, 32, 36),
    "blue": (36, 72, 196),
    "navy": (24, 32, 92),
    "green": (40, 140, 60),
    "yellow": (232, 204, 40),
    "orange": (236, 120, 24),
    "purple": (120, 48, 150),
    "pink": (236, 140, 180),
    "brown": (112, 70, 36),
    "beige": (214, 196, 156),
}
HAIR_COLOURS: dict[str, tuple[int, int, int]] = {
    "black": (20, 18, 18),
    "brown": (96, 58, 30),
    "blonde": (222, 190, 110),
    "gray": (150, 150, 150),
    "red": (160, 60, 30),
}
SKIN_TONES = [(240, 200, 170), (210, 160, 120), (160, 110, 80), (110, 72, 50)]

GENDERS = ("man", "woman")
BUILDS = ("slim", "average", "heavy")
HAIR_STYLES = ("short", "long", "ponytail", "bald", "curly")
UPPER_TYPES = ("t-shirt", "shirt", "jacket", "coat", "sweater", "hoodie")
PATTERNS = ("plain", "striped", "checked", "dotted")
SLEEVES = ("short", "long")
LOWER_TYPES = ("trousers", "jeans", "shorts", "skirt")
SHOE_TYPES = ("sneakers", "boots", "shoes")
BAG_TYPES = ("none", "backpack", "handbag", "shoulder bag")
HAT_TYPES = ("none", "cap", "beanie")
LOGO_SHAPES = ("star", "circle", "square", "triangle")
# The identity-specific small detail: exactly one kind per identity.
DETAIL_KINDS = ("logo", "stripes", "belt")

GARMENT_COLOURS = tuple(COLOURS)


@dataclass(frozen=True)
class Identity:
    """One person: every attribute that the renderer draws and captions may mention."""

    gender: str
    build: str
    skin: int
    hair_style: str
    hair_colour: str
    upper_type: str
    upper_colour: str
    upper_pattern: str
    pattern_colour: str
    sleeves: str
    lower_type: str
    lower_colour: str
    shoe_type: str
    shoe_colour: str
    bag: str
    bag_colour: str
    hat: str
    hat_colour: str
    glasses: bool
    detail: str
    logo_shape: str
    logo_colour: str
    stripe_count: int
    belt_colour: str

    def to_dict(self) -> dict:
        return asdict(self)

    def signature(self) -> tuple:
        """The visible attributes only: two identities with equal signatures look alike."""
        d = self.to_dict()
        if self.bag == "none":
            d["bag_colour"] = None
        if self.hair_style == "bald":
            d["hair_colour"] = None
        if self.hat == "none":
            d["hat_colour"] = None
        if self.upper_pattern == "plain":
            d["pattern_colour"] = None
        if self.detail != "logo":
            d["logo_shape"] = d["logo_colour"] = None
        if self.detail != "stripes":
            d["stripe_count"] = None
        if self.detail != "belt" or self.lower_type == "skirt":
            d["belt_colour"] = None
        return tuple(d.values())


def _pick(rng: np.random.Generator, options: tuple | list, exclude: object = None) -> object:
    choices = [o for o in options if o != exclude]
    return choices[int(rng.integers(len(choices)))]


def random_identity(rng: np.random.Generator) -> Identity:
    """Draws a base identity with all attributes independent."""
    gender = _pick(rng, GENDERS)
    lower_types = LOWER_TYPES if gender == "woman" else ("trousers", "jeans", "shorts")
    upper_colour = _pick(rng, GARMENT_COLOURS)
    return Identity(
        gender=gender,
        build=_pick(rng, BUILDS),
        skin=int(rng.integers(len(SKIN_TONES))),
        hair_style=_pick(rng, ("short", "long", "ponytail", "curly") if gender == "woman"
                         else ("short", "bald", "curly")),
        hair_colour=_pick(rng, tuple(HAIR_COLOURS)),
        upper_type=_pick(rng, UPPER_TYPES),
        upper_colour=upper_colour,
        upper_pattern=_pick(rng, PATTERNS) if rng.random() < 0.45 else "plain",
        pattern_colour=_pick(rng, GARMENT_COLOURS, exclude=upper_colour),
        sleeves=_pick(rng, SLEEVES),
        lower_type=_pick(rng, lower_types),
        lower_colour=_pick(rng, GARMENT_COLOURS),
        shoe_type=_pick(rng, SHOE_TYPES),
        shoe_colour=_pick(rng, ("black", "white", "brown", "gray", "red", "blue")),
        bag=_pick(rng, BAG_TYPES),
        bag_colour=_pick(rng, GARMENT_COLOURS),
        hat=_pick(rng, HAT_TYPES) if rng.random() < 0.35 else "none",
        hat_colour=_pick(rng, GARMENT_COLOURS),
        glasses=bool(rng.random() < 0.3),
        detail=_pick(rng, DETAIL_KINDS),
        logo_shape=_pick(rng, LOGO_SHAPES),
        logo_colour=_pick(rng, GARMENT_COLOURS, exclude=upper_colour),
        stripe_count=int(rng.integers(1, 4)),
        belt_colour=_pick(rng, ("black", "brown", "white", "red")),
    )


# Attributes a variant may change, with a function drawing a new value.
def _mutations(base: Identity) -> dict[str, object]:
    muts = {
        "upper_colour": lambda r: _pick(r, GARMENT_COLOURS, base.upper_colour),
        "lower_colour": lambda r: _pick(r, GARMENT_COLOURS, base.lower_colour),
        "upper_type": lambda r: _pick(r, UPPER_TYPES, base.upper_type),
        "lower_type": lambda r: _pick(
            r, LOWER_TYPES if base.gender == "woman" else ("trousers", "jeans", "shorts"),
            base.lower_type),
        "shoe_colour": lambda r: _pick(r, ("black", "white", "brown", "gray", "red", "blue"),
                                       base.shoe_colour),
        "bag": lambda r: _pick(r, BAG_TYPES, base.bag),
        "bag_colour": lambda r: _pick(r, GARMENT_COLOURS, base.bag_colour),
        "hair_colour": lambda r: _pick(r, tuple(HAIR_COLOURS), base.hair_colour),
        "upper_pattern": lambda r: _pick(r, PATTERNS, base.upper_pattern),
        "sleeves": lambda r: _pick(r, SLEEVES, base.sleeves),
        "glasses": lambda r: not base.glasses,
        "hat": lambda r: _pick(r, HAT_TYPES, base.hat),
        "logo_colour": lambda r: _pick(r, GARMENT_COLOURS, base.logo_colour),
        "stripe_count": lambda r: int(_pick(r, (1, 2, 3), base.stripe_count)),
        "belt_colour": lambda r: _pick(r, ("black", "brown", "white", "red"), base.belt_colour),
    }
    # Only attributes that are visible on this identity may tell a variant apart.
    irrelevant = {
        "bag_colour": base.bag == "none",
        "logo_colour": base.detail != "logo",
        "stripe_count": base.detail != "stripes",
        "belt_colour": base.detail != "belt" or base.lower_type == "skirt",
        "hair_colour": base.hair_style == "bald",
    }
    return {k: f for k, f in muts.items() if not irrelevant.get(k, False)}


def identity_families(
    rng: np.random.Generator, n_identities: int, family_size: tuple[int, int] = (2, 5)
) -> list[list[Identity]]:
    """Draws ``n_identities`` distinct identities grouped in families of near-twins.

    Each family is a base identity plus variants that differ from it in one or two
    attributes. Identities are unique across the whole data set.
    """
    seen: set[tuple] = set()
    families: list[list[Identity]] = []
    total = 0
    while total < n_identities:
        size = min(int(rng.integers(family_size[0], family_size[1] + 1)), n_identities - total)
        base = random_identity(rng)
        if base.signature() in seen:
            continue
        family = [base]
        seen.add(base.signature())
        attempts = 0
        while len(family) < size and attempts < 50:
            attempts += 1
            muts = _mutations(base)
            keys = list(muts)
            n_changes = 1 if rng.random() < 0.6 else 2
            chosen = [keys[i] for i in rng.choice(len(keys), size=n_changes, replace=False)]
            variant = replace(base, **{k: muts[k](rng) for k in chosen})
            if variant.signature() not in seen:
                seen.add(variant.signature())
                family.append(variant)
        families.append(family)
        total += len(family)
    return families
