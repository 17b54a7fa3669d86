"""The pen and the parts of a synthetic face: eyes, nose, mouth, facial hair, hair over the crown.

Coordinates are those of a 178x218 aligned CelebA image; a `Pen` maps them through one pose.
Cues that a small model trained for minutes would otherwise miss or mix up are drawn boldly: a
smile lifts the corners of the mouth and creases the cheeks even with the lips closed, gray hair
is flecked salt-and-pepper, a mustache is a broad walrus over the upper lip, a goatee a full tuft
and sideburns wide strips.
"""
from __future__ import annotations

import functools
import math

import numpy as np
from PIL import Image, ImageDraw

WIDTH, HEIGHT = 178, 218
SUPERSAMPLE = 2  # draw at twice the size and downsample: cheap anti-aliasing
FACE_X, FACE_Y = 89.0, 112.0  # centre of the face oval; the eyes sit 4 px above it

LIPSTICK_RGB = ((196, 24, 48), (214, 62, 118), (142, 12, 34))
EYESHADOW_RGB = ((112, 52, 140), (48, 80, 170), (70, 40, 30), (20, 20, 24))
EYE_RGB = ((60, 40, 25), (50, 90, 140), (70, 110, 60))

# Gray hair's flecks: the same 60 (angle, radius) spots on every crown.
GRAY_FLECKS = (
    np.radians(np.random.default_rng(0).uniform(205, 335, 60)),
    np.random.default_rng(1).uniform(0.72, 0.96, 60),
)


def mix(a: tuple[int, ...], b: tuple[int, ...], t: float) -> tuple[int, int, int]:
    return tuple(int(round(x + (y - x) * t)) for x, y in zip(a, b))


def shade(colour: tuple[int, ...], factor: float) -> tuple[int, int, int]:
    return tuple(int(min(255, max(0, round(c * factor)))) for c in colour)


def contrast(colour: tuple[int, ...], against: tuple[int, ...], minimum: int = 70) -> tuple[int, int, int]:
    """`colour`, darkened until it differs from `against` by `minimum` in some channel (hair on skin)."""
    for _ in range(8):
        if max(abs(a - b) for a, b in zip(colour, against)) >= minimum:
            break
        colour = shade(colour, 0.8)
    return colour


def ellipse_points(cx: float, cy: float, rx: float, ry: float, start: float = 0.0, end: float = 360.0, steps: int = 36):
    """Points of an ellipse arc (degrees; 0 = right, 90 = down, as in PIL)."""
    return _unit_arc(start, end, steps) * (rx, ry) + (cx, cy)


@functools.lru_cache(maxsize=None)
def _unit_arc(start: float, end: float, steps: int) -> np.ndarray:
    # A handful of arcs are drawn thousands of times: compute each one once.
    t = np.radians(np.linspace(start, end, steps, endpoint=end - start < 360))
    arc = np.stack([np.cos(t), np.sin(t)], axis=1)
    arc.flags.writeable = False
    return arc


class Pen:
    """Draws in face coordinates (a 178x218 frame) through one pose: rotation, scale and shift."""

    def __init__(self, image: Image.Image, angle: float, scale: float, shift: tuple[float, float]):
        self.draw = ImageDraw.Draw(image)
        cos, sin = math.cos(angle) * scale, math.sin(angle) * scale
        self.matrix = np.array([[cos, -sin], [sin, cos]]) * SUPERSAMPLE
        self.origin = (np.array([FACE_X + shift[0], FACE_Y + shift[1]])) * SUPERSAMPLE
        self.scale = scale

    def _xy(self, points: np.ndarray | list) -> list[float]:
        points = np.asarray(points, dtype=float) - (FACE_X, FACE_Y)
        return (points @ self.matrix.T + self.origin).ravel().tolist()

    def width(self, w: float) -> int:
        return max(1, round(w * SUPERSAMPLE * self.scale))

    def polygon(self, points, fill, outline=None) -> None:
        self.draw.polygon(self._xy(points), fill=fill, outline=outline, width=self.width(1.0) if outline else 1)

    def line(self, points, fill, width: float) -> None:
        self.draw.line(self._xy(points), fill=fill, width=self.width(width), joint="curve")

    def oval(self, cx, cy, rx, ry, fill=None, outline=None, width: float = 1.0) -> None:
        points = ellipse_points(cx, cy, rx, ry)
        if fill is not None:
            self.polygon(points, fill)
        if outline is not None:
            self.line(np.vstack([points, points[:1]]), outline, width)

    def dots(self, points: np.ndarray, fill, radius: float) -> None:
        for x, y in np.asarray(self._xy(points)).reshape(-1, 2):
            r = radius * SUPERSAMPLE * self.scale
            self.draw.ellipse((x - r, y - r, x + r, y + r), fill=fill)


def face_outline(fw: float, fh: float, jaw: float) -> np.ndarray:
    face = ellipse_points(FACE_X, FACE_Y, fw, fh, 0, 360, 48)
    below = np.clip((face[:, 1] - FACE_Y) / fh, 0, 1)
    face[:, 0] = FACE_X + (face[:, 0] - FACE_X) * (1 - (1 - jaw) * below**2)
    return face


def draw_hair_on_top(pen: Pen, row, fw: float, fh: float, long_hair: bool, hair) -> None:
    """Hair over the crown: the hairline is higher when receding, a jagged fringe for bangs."""
    cx, cy = FACE_X, FACE_Y
    crown = ellipse_points(cx, cy - 4, fw + 5, fh + 14, 180, 360, 28)
    side_low = cy + (20 if long_hair else -6)
    xs = np.linspace(cx + fw - 5, cx - fw + 5, 15)
    if row["Bangs"]:
        ys = cy - 24 + 4 * (np.arange(15) % 2)  # down to the eyebrows
    else:
        ys = cy - (34 if row["Receding_Hairline"] else 42) + 22 * ((xs - cx) / fw) ** 2
    hairline = np.stack([xs, ys], 1)
    right = [(cx + fw + 5, side_low), (cx + fw - 4, side_low)]
    left = [(cx - fw + 4, side_low), (cx - fw - 5, side_low)]
    pen.polygon(np.vstack([crown, right, hairline, left]), hair, outline=shade(hair, 0.6))
    if row["Gray_Hair"]:  # salt and pepper: dark flecks, a texture that neither a bald scalp nor other hair has
        pen.dots(_fleck_points(fw, fh), shade(hair, 0.45), 1.0)
    if row["Straight_Hair"]:  # combed strands
        for x in np.linspace(cx - fw + 12, cx + fw - 12, 6):
            pen.line([(x, cy - fh - 8), (x + (x - cx) * 0.15, cy - 46)], shade(hair, 0.8), 1)


def _fleck_points(fw: float, fh: float) -> np.ndarray:
    # A fixed scatter over the crown, between the hairline and the top of the head.
    angle, radius = GRAY_FLECKS
    return np.stack([FACE_X + (fw + 5) * radius * np.cos(angle), FACE_Y - 4 + (fh + 14) * radius * np.sin(angle)], 1)


def draw_eyes(pen: Pen, row, look, skin, brow, gaze: float) -> None:
    cx, cy = FACE_X, FACE_Y
    eye_y = cy - 4
    open_height = 1.8 if row["Narrow_Eyes"] else 3.8
    if row["Smiling"]:
        open_height *= 0.8
    iris = EYE_RGB[int(look["eye_colour"])]
    for sign in (-1, 1):
        x = cx + sign * 19
        if row["Heavy_Makeup"]:
            pen.oval(x, eye_y - 2, 11, 6, fill=EYESHADOW_RGB[int(look["eyeshadow"])])
        if row["Bags_Under_Eyes"]:
            pen.line(ellipse_points(x, eye_y + 3, 7, 4, 20, 160, 8), shade(skin, 0.72), 1.2)
        pen.oval(x, eye_y, 7, open_height, fill=(240, 240, 236))
        pen.oval(x + gaze, eye_y, min(3.0, open_height), min(3.0, open_height), fill=iris)
        pen.line(ellipse_points(x, eye_y, 7, open_height, 180, 360, 10), (30, 20, 20), 1.6 if row["Heavy_Makeup"] else 1.0)
        # eyebrows: thick when bushy, a peaked arc when arched
        thickness = 4.0 if row["Bushy_Eyebrows"] else 2.0
        lift = 6 if row["Arched_Eyebrows"] else 2.5
        inner, outer = x - sign * 9, x + sign * 11
        pen.line([(inner, eye_y - 10), (x + sign * 2, eye_y - 10 - lift), (outer, eye_y - 8)], brow, thickness)


def draw_nose(pen: Pen, row, skin) -> None:
    cx, cy = FACE_X, FACE_Y
    half = 8.0 if row["Big_Nose"] else 5.5
    tip = cy + (20 if row["Big_Nose"] else 17)
    point = 3 if row["Pointy_Nose"] else 0
    outline = [(cx - 2, cy - 4), (cx + 2, cy - 4), (cx + half, tip), (cx, tip + 2 + point), (cx - half, tip)]
    pen.polygon(outline, shade(skin, 0.88))
    for sign in (-1, 1):
        pen.oval(cx + sign * half * 0.45, tip - 0.5, 1.8, 1.1, fill=shade(skin, 0.45))


def draw_mouth(pen: Pen, row, look, skin) -> None:
    cx, y = FACE_X, FACE_Y + 32
    if row["Wearing_Lipstick"]:
        lips = LIPSTICK_RGB[int(look["lipstick"])]
    else:
        lips = mix(shade(skin, 0.8), (170, 80, 80), 0.35)
    thick = 4.5 if row["Big_Lips"] else 2.8
    is_open = row["Mouth_Slightly_Open"]
    if row["Smiling"]:
        # A wide crescent with raised corners and a crease beside each: plain even with the lips closed.
        half = 18.0
        arc = np.sin(np.linspace(0, math.pi, 13))
        upper = np.stack([np.linspace(cx - half, cx + half, 13), y - 7 + 5 * arc], 1)
        sag = 14 if is_open else 11
        lower = np.stack([np.linspace(cx + half, cx - half, 13), y - 7 + sag * arc], 1)
        for sign in (-1, 1):
            crease = ellipse_points(cx + sign * (half - 1), y - 7, 5, 8, 90 - sign * 90, 90 + sign * 30 - sign * 90, 6)
            pen.line(crease, shade(skin, 0.5), 1.8)
        if is_open:
            pen.polygon(np.vstack([upper, lower]), (70, 20, 24))
            teeth = np.stack([upper[:, 0], upper[:, 1] + 3.5], 1)[::-1]
            pen.polygon(np.vstack([upper, teeth]), (245, 245, 240))
            pen.line(upper, lips, thick * 0.7)
            pen.line(lower, lips, thick)
        else:
            pen.polygon(np.vstack([upper, lower]), lips)
            pen.line(np.vstack([upper[:1], lower[6:7] - (0, thick), upper[-1:]]), shade(lips, 0.6), 1)
    else:
        half = 12.0
        if is_open:
            pen.oval(cx, y + 2, half - 2, 6, fill=(70, 20, 24))
            pen.oval(cx, y + 2, half, 6 + thick * 0.4, outline=lips, width=thick * 0.8)
        else:
            pen.oval(cx, y, half, thick, fill=lips)
            pen.line([(cx - half, y), (cx, y + 0.6), (cx + half, y)], shade(lips, 0.55), 1)


def draw_facial_hair(pen: Pen, row, fw, fh, jaw, colour, skin) -> None:
    cx, cy = FACE_X, FACE_Y
    # Facial hair is a small cue on few people: drawn in a colour well apart from the skin.
    beard_colour = contrast(shade(colour, 0.75), skin, 110)
    if not row["No_Beard"] and not (row["Goatee"] or row["Mustache"]):
        # full beard: the lower face from ear to ear around the mouth
        outer = ellipse_points(cx, cy, fw, fh, 0, 180, 20)
        below = np.clip((outer[:, 1] - cy) / fh, 0, 1)
        outer[:, 0] = cx + (outer[:, 0] - cx) * (1 - (1 - jaw) * below**2)
        outer[:, 1] += 3
        inner = ellipse_points(cx, cy + 30, 20, 12, 180, 0, 12)
        jaw_line = outer[outer[:, 1] > cy + 8]
        pen.polygon(np.vstack([jaw_line, [(cx - fw + 6, cy + 12)], inner, [(cx + fw - 6, cy + 12)]]), beard_colour)
    # Mustache and goatee carry combed strands, so that they read as hair and not as a dark mouth.
    strands = mix(beard_colour, skin, 0.45)
    if row["Mustache"]:
        # A broad walrus mustache over the upper lip, its ends past the corners of a smile.
        pen.polygon([(cx - 28, cy + 36), (cx - 14, cy + 18), (cx, cy + 20), (cx + 14, cy + 18), (cx + 28, cy + 36),
                     (cx, cy + 30)], beard_colour)
        for x in (4.0, 9.0, 14.0, 19.0, 24.0):
            for sign in (-1, 1):
                pen.line([(cx + sign * x, cy + 21), (cx + sign * (x + 3), cy + 29)], strands, 1)
    if row["Goatee"]:
        # A tuft from below the lower lip (clear of an open mouth) to past the chin.
        chin = ellipse_points(cx, cy + 48, 17, 21, 180, 0, 10)
        pen.polygon(np.vstack([[(cx - 15, cy + 43)], chin, [(cx + 15, cy + 43)]]), beard_colour)
        for x in (-8.0, -4.0, 0.0, 4.0, 8.0):
            pen.line([(cx + x, cy + 46), (cx + x * 0.6, cy + 62)], strands, 1)
    if row["Sideburns"]:
        for sign in (-1, 1):
            x = cx + sign * (fw - 3)
            strip = [(x - 6, cy - 26), (x + 6, cy - 26), (x + 6 - sign * 3, cy + 26), (x - 6 - sign * 3, cy + 26)]
            pen.polygon(strip, beard_colour)
