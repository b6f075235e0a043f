"""Draws one SynthPedes image: a person seen from the front, back or side in a street scene.

Rendering is plain PIL drawing on a small canvas followed by photometric variation
(lighting, colour cast, blur, sensor noise) and optional occlusion, so that the same
identity looks different across images while its attributes stay recognisable.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .attributes import COLOURS, HAIR_COLOURS, SKIN_TONES, Identity

VIEWS = ("front", "back", "side")


@dataclass(frozen=True)
class Shot:
    """Per-image variation: everything that changes between two images of one person."""

    view: str
    facing_left: bool
    height: float  # person height as a share of the image height
    centre_x: float  # share of image width
    stride: float  # leg spread, share of person height
    arm_swing: float
    brightness: float
    tint: tuple[float, float, float]
    blur: float
    noise: float
    occlusion: str  # none | bottom | left | right
    background: int


def random_shot(rng: np.random.Generator) -> Shot:
    """Draws view, pose, placement and photometric variation for one image."""
    occl = ("none", "bottom", "left", "right")[int(rng.choice(4, p=[0.8, 0.1, 0.05, 0.05]))]
    return Shot(
        view=VIEWS[int(rng.choice(3, p=[0.4, 0.35, 0.25]))],
        facing_left=bool(rng.random() < 0.5),
        height=float(rng.uniform(0.74, 0.93)),
        centre_x=float(rng.uniform(0.38, 0.62)),
        stride=float(rng.uniform(0.0, 0.12)),
        arm_swing=float(rng.uniform(-0.08, 0.08)),
        brightness=float(rng.uniform(0.65, 1.25)),
        tint=tuple(float(t) for t in rng.uniform(0.88, 1.12, size=3)),
        blur=float(rng.uniform(0.0, 1.0)),
        noise=float(rng.uniform(0.0, 8.0)),
        occlusion=occl,
        background=int(rng.integers(1 << 30)),
    )


def _background(draw: ImageDraw.ImageDraw, w: int, h: int, rng: np.random.Generator) -> None:
    wall = tuple(int(c) for c in rng.integers(70, 200, size=3))
    draw.rectangle([0, 0, w, h], fill=wall)
    for _ in range(int(rng.integers(1, 5))):  # buildings, windows, signs
        x0, y0 = rng.integers(-w // 2, w), rng.integers(-h // 4, h // 2)
        bw, bh = rng.integers(w // 6, w), rng.integers(h // 8, h // 2)
        col = tuple(int(c) for c in rng.integers(40, 230, size=3))
        draw.rectangle([int(x0), int(y0), int(x0 + bw), int(y0 + bh)], fill=col)
    ground_y = int(h * rng.uniform(0.55, 0.8))
    ground = tuple(int(c) for c in rng.integers(60, 170, size=3))
    draw.rectangle([0, ground_y, w, h], fill=ground)
    if rng.random() < 0.5:  # kerb line
        draw.line([0, ground_y + 2, w, ground_y + 2], fill=(200, 200, 190), width=1)


class _Person:
    """Geometry helper: maps body coordinates (share of person height) to pixels."""

    def __init__(self, ident: Identity, shot: Shot, w: int, h: int) -> None:
        self.i, self.s = ident, shot
        self.ph = shot.height * h
        self.top = h * 0.985 - self.ph
        self.cx = shot.centre_x * w
        build = {"slim": 0.20, "average": 0.24, "heavy": 0.30}[ident.build]
        self.half_torso = (build * (0.62 if shot.view == "side" else 1.0)) * self.ph / 2

    def y(self, t: float) -> float:
        return self.top + t * self.ph

    def d(self, t: float) -> float:
        return t * self.ph


def _rgb(name: str) -> tuple[int, int, int]:
    return COLOURS[name]


def _draw_legs(dr: ImageDraw.ImageDraw, p: _Person, skin: tuple) -> None:
    i, s = p.i, p.s
    hip, knee, foot = p.y(0.52), p.y(0.74), p.y(0.96)
    leg_w = p.d(0.055 if i.build != "heavy" else 0.07)
    spread = p.d(s.stride)
    offsets = (-p.half_torso * 0.45, p.half_torso * 0.45) if s.view != "side" else (0.0, 0.0)
    lower = _rgb(i.lower_colour)
    for k, off in enumerate(offsets):
        dx = spread * (1 if k == 0 else -1)
        x_hip, x_foot = p.cx + off, p.cx + off + dx
        x_knee = (x_hip + x_foot) / 2
        dr.line([x_hip, hip, x_knee, knee, x_foot, foot], fill=skin, width=max(1, int(leg_w)))
        if i.lower_type in ("trousers", "jeans"):
            dr.line([x_hip, hip, x_knee, knee, x_foot, foot - p.d(0.01)], fill=lower,
                    width=max(1, int(leg_w * 1.15)))
            if i.lower_type == "jeans":  # seam
                dr.line([x_hip, hip + p.d(0.03), x_foot, foot - p.d(0.02)],
                        fill=tuple(min(255, c + 40) for c in lower), width=1)
        elif i.lower_type == "shorts":
            dr.line([x_hip, hip, x_knee, knee - p.d(0.04)], fill=lower,
                    width=max(1, int(leg_w * 1.3)))
        shoe = _rgb(i.shoe_colour)
        toe = p.d(0.05)  # side views are drawn facing right, then mirrored
        boot = p.d(0.05) if i.shoe_type == "boots" else 0
        ex = [x_foot - p.d(0.035), foot - p.d(0.02) - boot, x_foot + p.d(0.035) + (toe if s.view == "side" else 0), foot + p.d(0.015)]
        dr.rectangle([min(ex[0], ex[2]), ex[1], max(ex[0], ex[2]), ex[3]], fill=shoe)
    if i.lower_type == "skirt":
        w0, w1 = p.half_torso * 0.95, p.half_torso * 1.45
        dr.polygon([(p.cx - w0, hip - p.d(0.02)), (p.cx + w0, hip - p.d(0.02)),
                    (p.cx + w1, p.y(0.7)), (p.cx - w1, p.y(0.7))], fill=lower)


def _draw_torso(dr: ImageDraw.ImageDraw, p: _Person) -> None:
    i, s = p.i, p.s
    shoulder, waist = p.y(0.17), p.y(0.53 if i.upper_type in ("coat",) else 0.5)
    if i.upper_type == "coat":
        waist = p.y(0.62)
    ht = p.half_torso
    upper = _rgb(i.upper_colour)
    box = [p.cx - ht, shoulder, p.cx + ht, waist]
    dr.rounded_rectangle(box, radius=max(1, int(ht * 0.35)), fill=upper)
    pat = _rgb(i.pattern_colour)
    if i.upper_pattern == "striped":
        step = max(2, int(p.d(0.035)))
        for y in range(int(shoulder) + step, int(waist), step * 2):
            dr.line([p.cx - ht + 1, y, p.cx + ht - 1, y], fill=pat, width=max(1, step // 2))
    elif i.upper_pattern == "checked":
        step = max(3, int(p.d(0.05)))
        for y in range(int(shoulder) + step, int(waist), step):
            dr.line([p.cx - ht + 1, y, p.cx + ht - 1, y], fill=pat, width=1)
        for x in range(int(p.cx - ht) + step, int(p.cx + ht), step):
            dr.line([x, shoulder + 1, x, waist - 1], fill=pat, width=1)
    elif i.upper_pattern == "dotted":
        step = max(3, int(p.d(0.045)))
        for y in range(int(shoulder) + step // 2, int(waist), step):
            for x in range(int(p.cx - ht) + step // 2, int(p.cx + ht), step):
                dr.ellipse([x - 1, y - 1, x + 1, y + 1], fill=pat)
    if i.upper_type in ("jacket", "coat") and s.view == "front":  # open front zip line
        dr.line([p.cx, shoulder + p.d(0.03), p.cx, waist], fill=(20, 20, 20), width=1)
    if i.upper_type == "hoodie" and s.view != "front":  # hood on the back
        dr.ellipse([p.cx - ht * 0.6, shoulder - p.d(0.02), p.cx + ht * 0.6, shoulder + p.d(0.08)],
                   fill=tuple(max(0, c - 30) for c in upper))
    if i.upper_type == "shirt" and s.view == "front":  # collar
        dr.polygon([(p.cx - p.d(0.04), shoulder), (p.cx, shoulder + p.d(0.04)),
                    (p.cx + p.d(0.04), shoulder)], fill=(240, 240, 240))
    if i.detail == "logo" and s.view == "front":
        c, r, lc = (p.cx, p.y(0.3)), p.d(0.035), _rgb(i.logo_colour)
        if i.logo_shape == "circle":
            dr.ellipse([c[0] - r, c[1] - r, c[0] + r, c[1] + r], fill=lc)
        elif i.logo_shape == "square":
            dr.rectangle([c[0] - r, c[1] - r, c[0] + r, c[1] + r], fill=lc)
        elif i.logo_shape == "triangle":
            dr.polygon([(c[0], c[1] - r), (c[0] + r, c[1] + r), (c[0] - r, c[1] + r)], fill=lc)
        else:
            dr.regular_polygon((c[0], c[1], r * 1.2), n_sides=5, rotation=0, fill=lc)
    if i.detail == "belt" and i.lower_type != "skirt" and i.upper_type != "coat":
        bc = _rgb(i.belt_colour)
        dr.rectangle([p.cx - ht, p.y(0.5), p.cx + ht, p.y(0.525)], fill=bc)
        if s.view == "front":
            dr.rectangle([p.cx - p.d(0.015), p.y(0.497), p.cx + p.d(0.015), p.y(0.528)],
                         fill=(210, 190, 60))


def _draw_arms(dr: ImageDraw.ImageDraw, p: _Person, skin: tuple, front_layer: bool) -> None:
    i, s = p.i, p.s
    shoulder, hand = p.y(0.2), p.y(0.5)
    arm_w = max(1, int(p.d(0.05 if i.build != "heavy" else 0.065)))
    upper = _rgb(i.upper_colour)
    sides = (-1, 1) if s.view != "side" else (1,)
    for side in sides:
        if s.view == "side":
            x0 = p.cx
            x1 = p.cx + p.d(s.arm_swing) * 2
        else:
            x0 = p.cx + side * (p.half_torso + arm_w * 0.4)
            x1 = x0 + side * p.d(0.03) + p.d(s.arm_swing) * side
        if not front_layer and s.view == "side":
            continue
        dr.line([x0, shoulder, x1, hand], fill=skin, width=arm_w)
        sleeve_end = hand - p.d(0.03) if i.sleeves == "long" else shoulder + p.d(0.11)
        t = (sleeve_end - shoulder) / (hand - shoulder)
        xs = x0 + (x1 - x0) * t
        dr.line([x0, shoulder, xs, sleeve_end], fill=upper, width=arm_w + 1)
        if i.detail == "stripes":  # identity detail: n bands on each sleeve
            for k in range(i.stripe_count):
                tt = 0.12 + 0.1 * k if i.sleeves == "short" else 0.3 + 0.15 * k
                yy = shoulder + (hand - shoulder) * tt
                xx = x0 + (x1 - x0) * tt
                dr.line([xx - arm_w, yy, xx + arm_w, yy], fill=(245, 245, 245), width=1)


def _draw_head(dr: ImageDraw.ImageDraw, p: _Person, skin: tuple) -> None:
    i, s = p.i, p.s
    r = p.d(0.07)
    cx, cy = p.cx, p.y(0.085)
    hair = HAIR_COLOURS[i.hair_colour]
    if i.hair_style == "long" and i.hat != "beanie":  # behind the head, down to the shoulders
        dr.rectangle([cx - r * 1.1, cy, cx + r * 1.1, p.y(0.24)], fill=hair)
    dr.rectangle([cx - r * 0.35, cy + r * 0.8, cx + r * 0.35, p.y(0.18)], fill=skin)  # neck
    dr.ellipse([cx - r, cy - r, cx + r, cy + r], fill=skin)
    if i.hair_style != "bald":
        if s.view == "back":
            dr.ellipse([cx - r, cy - r, cx + r, cy + r * 0.9], fill=hair)
        else:
            dr.chord([cx - r * 1.05, cy - r * 1.1, cx + r * 1.05, cy + r * 0.6], 180, 360, fill=hair)
        if i.hair_style == "curly":
            for k in range(-2, 3):
                dr.ellipse([cx + k * r * 0.45 - r * 0.3, cy - r * 1.2, cx + k * r * 0.45 + r * 0.3,
                            cy - r * 0.6], fill=hair)
        if i.hair_style == "ponytail" and s.view != "front":
            sign = 1 if s.view == "back" else -1
            tx = cx + sign * r * (0.2 if s.view == "back" else 1.0)
            dr.ellipse([tx - r * 0.35, cy, tx + r * 0.35, cy + r * 1.6], fill=hair)
    if s.view != "back":
        eye_y = cy + r * 0.05
        eyes = (-0.4, 0.4) if s.view == "front" else (0.5,)
        for e in eyes:
            ex = cx + e * r
            dr.point([ex, eye_y], fill=(20, 20, 20))
            if i.glasses:
                dr.rectangle([ex - r * 0.28, eye_y - r * 0.2, ex + r * 0.28, eye_y + r * 0.2],
                             outline=(15, 15, 15), width=1)
    if i.hat == "cap":
        hc = _rgb(i.hat_colour)
        dr.chord([cx - r * 1.05, cy - r * 1.15, cx + r * 1.05, cy + r * 0.3], 180, 360, fill=hc)
        if s.view != "back":
            brim = 1
            x_end = cx + brim * r * (1.6 if s.view == "side" else 0.9)
            x_start = cx if s.view == "side" else cx - r * 0.9
            dr.rectangle([min(x_start, x_end), cy - r * 0.45, max(x_start, x_end), cy - r * 0.3], fill=hc)
    elif i.hat == "beanie":
        hc = _rgb(i.hat_colour)
        dr.chord([cx - r * 1.1, cy - r * 1.35, cx + r * 1.1, cy + r * 0.2], 180, 360, fill=hc)
        dr.rectangle([cx - r * 1.1, cy - r * 0.6, cx + r * 1.1, cy - r * 0.35], fill=hc)


def _draw_bag(dr: ImageDraw.ImageDraw, p: _Person, behind: bool) -> None:
    i, s = p.i, p.s
    if i.bag == "none":
        return
    bc = _rgb(i.bag_colour)
    ht = p.half_torso
    if i.bag == "backpack":
        if s.view == "back" and not behind:
            dr.rounded_rectangle([p.cx - ht * 0.8, p.y(0.2), p.cx + ht * 0.8, p.y(0.45)],
                                 radius=max(1, int(ht * 0.2)), fill=bc)
        elif s.view == "side" and behind:
            back = -1  # the back is on the left of a right-facing person
            x0 = p.cx + back * ht * 0.8
            x1 = x0 + back * p.d(0.09)
            dr.rounded_rectangle([min(x0, x1), p.y(0.2), max(x0, x1), p.y(0.43)],
                                 radius=max(1, int(ht * 0.2)), fill=bc)
        elif s.view == "front" and not behind:  # only the straps show
            for side in (-1, 1):
                x = p.cx + side * ht * 0.55
                dr.line([x, p.y(0.17), x, p.y(0.38)], fill=bc, width=max(1, int(p.d(0.02))))
    elif i.bag == "handbag" and not behind:
        side = 1
        x = p.cx + side * (ht + p.d(0.05))
        dr.rectangle([x - p.d(0.045), p.y(0.47), x + p.d(0.045), p.y(0.56)], fill=bc)
        dr.arc([x - p.d(0.03), p.y(0.43), x + p.d(0.03), p.y(0.5)], 180, 360, fill=bc)
    elif i.bag == "shoulder bag" and not behind:
        dr.line([p.cx - ht * 0.8, p.y(0.18), p.cx + ht * 0.9, p.y(0.46)], fill=bc,
                width=max(1, int(p.d(0.015))))
        x = p.cx + ht * 1.0
        dr.rectangle([x - p.d(0.05), p.y(0.44), x + p.d(0.04), p.y(0.53)], fill=bc)


def _occlude(dr: ImageDraw.ImageDraw, w: int, h: int, kind: str, rng: np.random.Generator) -> None:
    col = tuple(int(c) for c in rng.integers(30, 220, size=3))
    if kind == "bottom":  # a car, bench or railing in front of the legs
        dr.rectangle([0, int(h * rng.uniform(0.72, 0.85)), w, h], fill=col)
    elif kind in ("left", "right"):  # a pole or another pedestrian's shoulder
        bw = int(w * rng.uniform(0.15, 0.3))
        x0 = 0 if kind == "left" else w - bw
        dr.rectangle([x0, 0, x0 + bw, h], fill=col)


def render(ident: Identity, shot: Shot, size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    """Renders ``ident`` under ``shot`` to an RGB image of ``size`` = (height, width)."""
    h, w = size
    img = Image.new("RGB", (w, h))
    dr = ImageDraw.Draw(img)
    _background(dr, w, h, np.random.default_rng(shot.background))
    p = _Person(ident, shot, w, h)
    skin = SKIN_TONES[ident.skin]
    _draw_bag(dr, p, behind=True)
    _draw_legs(dr, p, skin)
    _draw_arms(dr, p, skin, front_layer=False)
    _draw_torso(dr, p)
    _draw_head(dr, p, skin)
    _draw_bag(dr, p, behind=False)
    if shot.view == "side":
        _draw_arms(dr, p, skin, front_layer=True)
    if shot.occlusion != "none":
        _occlude(dr, w, h, shot.occlusion, rng)
    if shot.view == "side" and shot.facing_left:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if shot.blur > 0.15:
        img = img.filter(ImageFilter.GaussianBlur(shot.blur))
    arr = np.asarray(img, dtype=np.float32)
    arr = arr * shot.brightness * np.asarray(shot.tint, dtype=np.float32)
    if shot.noise > 0:
        arr += rng.normal(0.0, shot.noise, size=arr.shape).astype(np.float32)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
