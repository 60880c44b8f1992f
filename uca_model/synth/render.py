"""SynthPedes images: a drawn pedestrian (pose, view, scale, lighting, background, occluders vary
per image) from an identity's attributes."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageOps

from .schema import COLOURS, HAIR_RGB, SKIN_TONES, PersonAttributes, pick


@dataclass(frozen=True)
class _Traits:
    """Per-identity looks that are not attributes (kept fixed across the identity's images)."""

    skin: tuple[int, int, int]
    height: float  # fraction of the nominal figure height
    build: float  # width factor


def sample_traits(rng: np.random.Generator) -> _Traits:
    base = np.array(SKIN_TONES[int(rng.integers(len(SKIN_TONES)))], dtype=np.float64)
    skin = tuple(int(v) for v in np.clip(base + rng.normal(0, 6, 3), 0, 255))
    return _Traits(skin=skin, height=float(rng.uniform(0.9, 1.04)), build=float(rng.uniform(0.94, 1.08)))


def _jitter(rng: np.random.Generator, rgb: Sequence[int], amount: float = 10.0) -> tuple[int, int, int]:
    v = np.clip(np.asarray(rgb, dtype=np.float64) + rng.normal(0, amount, 3), 0, 255)
    return tuple(int(x) for x in v)


def _shade(rgb: Sequence[int], f: float) -> tuple[int, int, int]:
    return tuple(int(min(255, max(0, c * f))) for c in rgb)


def _background(rng: np.random.Generator, h: int, w: int) -> Image.Image:
    top = rng.uniform(60, 210, 3)
    bottom = rng.uniform(60, 210, 3)
    t = np.linspace(0.0, 1.0, h)[:, None, None]
    arr = (1 - t) * top + t * bottom
    arr = np.broadcast_to(arr, (h, w, 3)).copy()
    ground = int(h * rng.uniform(0.68, 0.9))
    arr[ground:] = rng.uniform(70, 170, 3) * rng.uniform(0.9, 1.1, (1, 1, 3))
    img = Image.fromarray(arr.astype(np.uint8))
    d = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(0, 5))):  # clutter: facades, windows, signs
        x0, y0 = rng.uniform(-0.2, 1.0) * w, rng.uniform(-0.1, 0.7) * h
        x1, y1 = x0 + rng.uniform(0.1, 0.6) * w, y0 + rng.uniform(0.05, 0.4) * h
        d.rectangle((x0, y0, x1, y1), fill=tuple(int(v) for v in rng.uniform(40, 220, 3)))
    return img


class _Canvas:
    """Drawing in figure coordinates: x from the figure's centre line, y from the top of its head,
    both in units of the figure height ``fh`` (pixels of the supersampled image)."""

    def __init__(self, img: Image.Image, cx: float, top: float, fh: float) -> None:
        self.d, self.cx, self.top, self.fh = ImageDraw.Draw(img), cx, top, fh

    def P(self, x: float, y: float) -> tuple[float, float]:
        return (self.cx + x * self.fh, self.top + y * self.fh)

    def line(self, p0, p1, width: float, fill) -> None:
        r = width * self.fh / 2
        x0, y0 = self.P(*p0)
        x1, y1 = self.P(*p1)
        self.d.line((x0, y0, x1, y1), fill=fill, width=max(1, int(round(2 * r))))
        for x, y in ((x0, y0), (x1, y1)):
            self.d.ellipse((x - r, y - r, x + r, y + r), fill=fill)

    def poly(self, points, fill) -> None:
        self.d.polygon([self.P(x, y) for x, y in points], fill=fill)

    def ellipse(self, x: float, y: float, rx: float, ry: float, fill, outline=None, width: int = 1) -> None:
        x0, y0 = self.P(x - rx, y - ry)
        x1, y1 = self.P(x + rx, y + ry)
        self.d.ellipse((x0, y0, x1, y1), fill=fill, outline=outline, width=width)

    def chord(self, p0, p1, start: float, end: float, fill) -> None:
        self.d.chord((*self.P(*p0), *self.P(*p1)), start, end, fill=fill)


@dataclass(frozen=True)
class _Figure:
    """One image's figure: the identity, its colours (jittered per image), view and skeleton."""

    a: PersonAttributes
    view: str
    skin: tuple
    upper: tuple
    lower: tuple
    shoes: tuple
    hair: tuple
    bag: tuple | None
    hat: tuple | None
    sw: float  # shoulder half-width
    hw: float  # hip half-width
    legs: list  # (hip, knee, ankle) per leg
    arms: list  # (shoulder, elbow, wrist) per arm


Y_SH, Y_HIP, Y_KNEE, Y_ANK = 0.175, 0.5, 0.72, 0.94


def _figure(a: PersonAttributes, traits: _Traits, rng: np.random.Generator, view: str, stride: float) -> _Figure:
    female = a.gender == "female"
    skin = _jitter(rng, traits.skin, 4)
    upper = _jitter(rng, COLOURS[a.upper_colour])
    lower = _jitter(rng, COLOURS[a.lower_colour])
    shoes = _jitter(rng, COLOURS[a.shoe_colour], 8)
    hair = _jitter(rng, HAIR_RGB[a.hair_colour], 8)
    bagc = _jitter(rng, COLOURS[a.bag_colour]) if a.bag_type != "none" else None
    hatc = _jitter(rng, COLOURS[a.hat_colour]) if a.hat_type != "none" else None
    sw = 0.12 * traits.build * (0.92 if female else 1.05)
    hw = 0.095 * traits.build * (1.1 if female else 1.0)
    legs = []
    for side in (-1, 1):  # hip, knee, ankle per leg; stride swings them in opposite directions
        ang = side * stride * 0.13
        hip = (side * 0.048, Y_HIP)
        knee = (hip[0] + math.sin(ang) * (Y_KNEE - Y_HIP), Y_KNEE)
        ank = (knee[0] + math.sin(ang * 1.2) * (Y_ANK - Y_KNEE), Y_ANK)
        legs.append((hip, knee, ank))
    arms = []
    for side in (-1, 1):
        ang = -side * stride * 0.25
        sh = (side * (sw - 0.018), Y_SH + 0.015)
        out = side * 0.1
        elbow = (sh[0] + math.sin(out + ang) * 0.17, sh[1] + math.cos(out + ang) * 0.17)
        wrist = (elbow[0] + math.sin(out * 0.6 + ang * 1.3) * 0.16, elbow[1] + math.cos(out * 0.6 + ang) * 0.16)
        arms.append((sh, elbow, wrist))
    return _Figure(a, view, skin, upper, lower, shoes, hair, bagc, hatc, sw, hw, legs, arms)


def _draw_behind(cv: _Canvas, f: _Figure, rng: np.random.Generator) -> None:
    """Behind the body: a backpack's body (front view), long hair's back part."""
    a = f.a
    if a.bag_type == "backpack" and f.view == "front":
        side = 1 if rng.random() < 0.5 else -1
        cv.poly([(side * (f.sw - 0.03), 0.2), (side * (f.sw + 0.035), 0.21), (side * (f.sw + 0.035), 0.45),
                 (side * (f.sw - 0.03), 0.45)], f.bag)
    if a.hair_length == "long":
        cv.poly([(-0.068, 0.06), (0.068, 0.06), (0.085, 0.3), (-0.085, 0.3)], f.hair)


def _draw_legs(cv: _Canvas, f: _Figure) -> None:
    """Legs, shoes and the lower garment."""
    a, lower, skin, hw = f.a, f.lower, f.skin, f.hw
    leg_w = 0.062
    for hip, knee, ank in f.legs:
        if a.lower_type in ("trousers", "jeans"):
            cv.line(hip, knee, leg_w, lower)
            cv.line(knee, ank, leg_w * 0.85, lower)
            if a.lower_type == "jeans":  # light outer seam
                seam = _shade(lower, 1.35)
                cv.line((hip[0] * 1.45, hip[1] + 0.02),
                        (ank[0] * 1.2 + (0.012 if hip[0] > 0 else -0.012), ank[1] - 0.02), 0.008, seam)
        elif a.lower_type == "shorts":
            mid = (hip[0] + 0.6 * (knee[0] - hip[0]), hip[1] + 0.6 * (knee[1] - hip[1]))
            cv.line(mid, knee, leg_w * 0.8, skin)
            cv.line(knee, ank, leg_w * 0.75, skin)
            cv.line(hip, mid, leg_w * 1.1, lower)
        else:  # skirt: bare legs, the skirt is drawn over the hips
            cv.line(hip, knee, leg_w * 0.8, skin)
            cv.line(knee, ank, leg_w * 0.75, skin)
        cv.ellipse(ank[0] + 0.008, ank[1] + 0.025, 0.042, 0.022, f.shoes)
    if a.lower_type in ("trousers", "jeans", "shorts"):
        cv.poly([(-hw, Y_HIP - 0.03), (hw, Y_HIP - 0.03), (hw * 0.95, Y_HIP + 0.06), (-hw * 0.95, Y_HIP + 0.06)], lower)
    else:
        cv.poly([(-hw, Y_HIP - 0.03), (hw, Y_HIP - 0.03), (hw + 0.07, 0.7), (-hw - 0.07, 0.7)], lower)


def _draw_torso(cv: _Canvas, f: _Figure) -> None:
    """Neck, torso and the upper garment's details, then the arms (sleeves or skin)."""
    a, upper, skin, sw, hw = f.a, f.upper, f.skin, f.sw, f.hw
    y_end = {"coat": 0.72, "jacket": 0.53, "hoodie": 0.53}.get(a.upper_type, 0.51)
    flare = 0.03 if a.upper_type == "coat" else 0.0
    cv.line((0, 0.13), (0, 0.18), 0.04, skin)  # neck
    torso = [(-sw, Y_SH), (sw, Y_SH), (hw + 0.005 + flare, y_end), (-hw - 0.005 - flare, y_end)]
    if a.upper_type == "hoodie" and f.view == "front":
        cv.ellipse(0, 0.155, 0.07, 0.035, _shade(upper, 0.8))  # hood folded around the neck
    cv.poly(torso, upper)
    for side in (-1, 1):
        cv.ellipse(side * (sw - 0.02), Y_SH + 0.02, 0.035, 0.03, upper)
    if f.view == "front":
        if a.upper_type == "shirt":
            cv.poly([(-0.035, Y_SH - 0.01), (0.0, Y_SH + 0.045), (0.035, Y_SH - 0.01)], _shade(upper, 1.25))
            cv.line((0, Y_SH + 0.05), (0, y_end - 0.02), 0.008, _shade(upper, 0.7))
        elif a.upper_type in ("jacket", "coat"):
            cv.line((0, Y_SH + 0.01), (0, y_end - 0.01), 0.014, _shade(upper, 0.6))
            if a.upper_type == "coat":
                for yb in (0.27, 0.37, 0.47):
                    cv.ellipse(0.03, yb, 0.008, 0.008, _shade(upper, 0.5))
        elif a.upper_type == "hoodie":
            cv.poly([(-0.06, 0.4), (0.06, 0.4), (0.07, 0.5), (-0.07, 0.5)], _shade(upper, 0.8))
        elif a.upper_type == "t-shirt":
            cv.poly([(-0.03, Y_SH - 0.005), (0.0, Y_SH + 0.025), (0.03, Y_SH - 0.005)], skin)
    if a.upper_type == "sweater":
        cv.poly([(-hw - 0.005, y_end - 0.03), (hw + 0.005, y_end - 0.03), (hw + 0.005, y_end), (-hw - 0.005, y_end)],
                _shade(upper, 0.75))
    long_sleeves = a.upper_type != "t-shirt"
    for sh, elbow, wrist in f.arms:
        if long_sleeves:
            cv.line(sh, elbow, 0.05, upper)
            cv.line(elbow, wrist, 0.045, upper)
        else:
            mid = (sh[0] + 0.55 * (elbow[0] - sh[0]), sh[1] + 0.55 * (elbow[1] - sh[1]))
            cv.line(mid, elbow, 0.04, skin)
            cv.line(elbow, wrist, 0.038, skin)
            cv.line(sh, mid, 0.056, upper)
        cv.ellipse(wrist[0], wrist[1] + 0.012, 0.02, 0.022, skin)


def _draw_bag(cv: _Canvas, f: _Figure, rng: np.random.Generator) -> None:
    """The bag over the body: backpack straps (front) or body (back), shoulder bag, handbag."""
    a, bagc, sw, hw = f.a, f.bag, f.sw, f.hw
    if a.bag_type == "backpack":
        if f.view == "front":
            for side in (-1, 1):
                cv.line((side * (sw - 0.04), Y_SH), (side * (sw - 0.05), 0.4), 0.016, _shade(bagc, 0.8))
        else:
            cv.poly([(-0.085, 0.2), (0.085, 0.2), (0.09, 0.47), (-0.09, 0.47)], bagc)
            cv.line((-0.08, 0.26), (0.08, 0.26), 0.01, _shade(bagc, 0.7))
    elif a.bag_type == "shoulder bag":
        side = 1 if rng.random() < 0.5 else -1
        cv.line((-side * (sw - 0.03), Y_SH), (side * (hw + 0.02), 0.47), 0.012, _shade(bagc, 0.8))
        cv.poly([(side * (hw - 0.02), 0.44), (side * (hw + 0.08), 0.44), (side * (hw + 0.08), 0.56),
                 (side * (hw - 0.02), 0.56)], bagc)
    elif a.bag_type == "handbag":
        wrist = f.arms[int(rng.integers(2))][2]
        x, y = wrist[0], wrist[1] + 0.03
        cv.line((x - 0.02, y + 0.005), (x + 0.02, y + 0.005), 0.008, _shade(bagc, 0.7))
        cv.poly([(x - 0.045, y + 0.02), (x + 0.045, y + 0.02), (x + 0.05, y + 0.1), (x - 0.05, y + 0.1)], bagc)


def _draw_head(cv: _Canvas, f: _Figure) -> None:
    """Head, hair, glasses (front view), hat."""
    a, hair, hatc = f.a, f.hair, f.hat
    if f.view == "front":
        if a.hair_length == "long":
            for side in (-1, 1):  # strands falling over the shoulders
                cv.poly([(side * 0.04, 0.06), (side * 0.072, 0.06), (side * 0.085, 0.26), (side * 0.05, 0.24)], hair)
        cv.ellipse(0, 0.068, 0.06, 0.066, hair)
        cv.ellipse(0, 0.086, 0.05, 0.058, f.skin)
        if a.glasses == "none":
            for side in (-1, 1):
                cv.ellipse(side * 0.02, 0.08, 0.006, 0.005, (40, 30, 30))
        else:
            dark = a.glasses == "sunglasses"
            for side in (-1, 1):
                cv.ellipse(side * 0.022, 0.08, 0.017, 0.012, (15, 15, 20) if dark else None,
                           outline=(20, 20, 25), width=max(1, int(cv.fh * 0.006)))
            cv.line((-0.006, 0.079), (0.006, 0.079), 0.005, (20, 20, 25))
    else:
        cv.ellipse(0, 0.07, 0.058, 0.068, hair)
    if a.hat_type == "cap":
        cv.chord((-0.062, 0.0), (0.062, 0.1), 180, 360, hatc)
        if f.view == "front":
            cv.line((-0.07, 0.05), (0.07, 0.05), 0.016, _shade(hatc, 0.75))
    elif a.hat_type == "beanie":
        cv.chord((-0.064, -0.012), (0.064, 0.11), 170, 370, hatc)
        cv.line((-0.062, 0.045), (0.062, 0.045), 0.02, _shade(hatc, 0.8))


def _draw_occluder(cv: _Canvas, rng: np.random.Generator, h: int) -> str | None:
    """In a quarter of the images: a pole, an object in front of the legs, or a passer-by at the side."""
    if rng.random() >= 0.25:
        return None
    d, cx, top, fh = cv.d, cv.cx, cv.top, cv.fh
    occluder = pick(rng, ("pole", "box", "passer-by"))
    c = tuple(int(v) for v in rng.uniform(30, 200, 3))
    if occluder == "pole":
        x = cx + float(rng.uniform(-0.15, 0.15)) * fh
        half = float(rng.uniform(0.02, 0.045)) * fh
        d.rectangle((x - half, 0, x + half, h), fill=c)
    elif occluder == "box":
        y = top + fh * float(rng.uniform(0.7, 0.85))
        x0 = cx + float(rng.uniform(-0.5, 0.0)) * fh
        d.rectangle((x0, y, x0 + float(rng.uniform(0.25, 0.6)) * fh, h), fill=c)
    else:
        side = 1 if rng.random() < 0.5 else -1
        x = cx + side * float(rng.uniform(0.22, 0.3)) * fh
        r = 0.14 * fh
        d.ellipse((x - r, top + 0.25 * fh, x + r, top + 1.1 * fh), fill=c)
    return occluder


def _camera(img: Image.Image, rng: np.random.Generator, H: int, W: int) -> tuple[Image.Image, bool]:
    """Downsample (anti-aliasing), lighting, sensor noise, horizontal flip."""
    img = img.resize((W, H), Image.Resampling.BOX)
    arr = np.asarray(img, dtype=np.float32)
    brightness = float(rng.uniform(0.7, 1.2))
    tint = rng.uniform(0.92, 1.08, 3).astype(np.float32)
    ramp = np.linspace(-1.0, 1.0, W, dtype=np.float32)[None, :, None] * float(rng.uniform(-0.15, 0.15))
    arr = arr * brightness * tint * (1.0 + ramp)
    arr = arr + rng.normal(0.0, float(rng.uniform(1.5, 5.0)), arr.shape).astype(np.float32)
    img = Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8))
    flipped = bool(rng.random() < 0.5)
    return (ImageOps.mirror(img) if flipped else img), flipped


def render_person(
    a: PersonAttributes,
    traits: _Traits,
    rng: np.random.Generator,
    size: tuple[int, int],
    supersample: int = 2,
) -> tuple[Image.Image, dict[str, Any]]:
    """Draw one image of identity ``a`` at ``size`` = (H, W); returns the image and its nuisance
    parameters (view, flip, occlusion, ...). Pose, view, scale, position, background, lighting,
    occlusion and flip are drawn from ``rng`` (in this order: the draws of each stage follow the
    previous stage's, so an image is the same for the same stream)."""
    H, W = size
    h, w = H * supersample, W * supersample
    img = _background(rng, h, w)
    view = "back" if rng.random() < 0.25 else "front"
    stride = float(rng.uniform(-1, 1))
    fh = h * float(rng.uniform(0.74, 0.93)) * traits.height
    top = float(rng.uniform(0.02, 0.98)) * (h - fh)
    cx = w / 2 + float(rng.uniform(-0.1, 0.1)) * w
    cv = _Canvas(img, cx, top, fh)
    f = _figure(a, traits, rng, view, stride)
    _draw_behind(cv, f, rng)
    _draw_legs(cv, f)
    _draw_torso(cv, f)
    _draw_bag(cv, f, rng)
    _draw_head(cv, f)
    occluder = _draw_occluder(cv, rng, h)
    img, flipped = _camera(img, rng, H, W)
    return img, {"view": view, "flipped": flipped, "occluder": occluder}
