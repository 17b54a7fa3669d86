"""Drawing synthetic faces with PIL: a person's look and one photo's pose, light and noise.

Faces sit where aligned CelebA faces sit (eyes at y ~ 108, centred), and the cues stay in the
part of the image that the training augmentation (resize to 220x270, random crop 178x218) always
keeps. DRAWN_ATTRIBUTES are drawn plainly enough for a small model to learn. Some others are
drawn subtly (Chubby, Double_Chin, Big_Lips, Big_Nose, Pointy_Nose, Bushy_Eyebrows,
Arched_Eyebrows, Narrow_Eyes, Bags_Under_Eyes, Receding_Hairline, Wavy_Hair, Straight_Hair,
5_o_Clock_Shadow); the rest (Attractive, Young, High_Cheekbones, Oval_Face) are labels only,
correlated with drawn ones the way real labels are (faceattr.synth.sampling).
"""
from __future__ import annotations

import math
from typing import Any, Iterable

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from faceattr.attributes import ATTRIBUTES
from faceattr.synth.parts import (
    FACE_X, FACE_Y, HEIGHT, SUPERSAMPLE, WIDTH, Pen, contrast, draw_eyes, draw_facial_hair, draw_hair_on_top,
    draw_mouth, draw_nose, ellipse_points, face_outline, mix, shade,
)
from faceattr.synth.sampling import sample_identities

DRAWN_ATTRIBUTES: tuple[str, ...] = (
    "Bald",
    "Bangs",
    "Black_Hair",
    "Blond_Hair",
    "Blurry",
    "Brown_Hair",
    "Eyeglasses",
    "Goatee",
    "Gray_Hair",
    "Heavy_Makeup",
    "Male",
    "Mouth_Slightly_Open",
    "Mustache",
    "No_Beard",
    "Pale_Skin",
    "Rosy_Cheeks",
    "Sideburns",
    "Smiling",
    "Wearing_Earrings",
    "Wearing_Hat",
    "Wearing_Lipstick",
    "Wearing_Necklace",
    "Wearing_Necktie",
)

# Pixel coordinates relative to the image centre, for the lighting ramp.
_PIXEL_GRID = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
_PIXEL_GRID -= np.array([HEIGHT / 2, WIDTH / 2], np.float32)[:, None, None]

NOISE_SHAPE = (HEIGHT + 64, WIDTH + 64, 3)

HAIR_LABELS = {"black": "Black_Hair", "blond": "Blond_Hair", "brown": "Brown_Hair", "gray": "Gray_Hair"}
HAIR_RGB = {
    "black": (30, 24, 22),
    "blond": (222, 190, 118),
    "brown": (108, 68, 38),
    "gray": (172, 172, 176),
    "other": (176, 68, 30),  # ginger: a colour that carries none of the four labels
}
ACCESSORY_RGB = (  # hats, ties, clothes: saturated colours
    (200, 30, 30), (30, 90, 200), (30, 150, 60), (230, 180, 20), (120, 40, 160),
    (240, 120, 20), (20, 160, 170), (235, 235, 235), (40, 40, 50),
)


def draw_face(present: Iterable[str], seed: int = 0) -> Image.Image:
    """One synthetic face showing exactly the attributes named in `present` (the rest absent).

    For demos and tests: the person's look and the photo's pose, light and noise come from
    `seed`, so the same seed with one attribute added differs only where that attribute is drawn.
    The caller keeps the names consistent (a beard without "No_Beard", one hair colour, ...).
    """
    present = set(present)
    unknown = sorted(present - set(ATTRIBUTES))
    if unknown:
        raise ValueError(f"draw_face: unknown attribute(s) {', '.join(unknown)}; see faceattr.data.labels.ATTRIBUTES")
    people = sample_identities(np.random.default_rng([seed, 3]), np.ones(1, np.int64))
    look = {key: values[0] for key, values in people.items()}
    look["long_hair"] = "Male" not in present
    row = {attr: attr in present for attr in ATTRIBUTES}
    return render_face(row, look, np.random.default_rng([seed, 1]), noise_field(seed))


def noise_field(seed: int) -> np.ndarray:
    """The unit Gaussian field, larger than an image, that every image of a seed takes a window of."""
    return np.random.default_rng([seed, 2]).standard_normal(NOISE_SHAPE, dtype=np.float32)


def _background(rng: np.random.Generator) -> Image.Image:
    """A smooth random colour field with a few flat shapes: clutter the model must learn to ignore."""
    # Muted colours: a grey level plus a little hue, like rooms and sky rather than paint.
    grey = rng.uniform(40, 215)
    field = np.clip(grey + rng.normal(0, 45, (4, 3, 3)), 0, 255).astype(np.uint8)
    image = Image.fromarray(field, "RGB").resize((WIDTH, HEIGHT), Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(image)
    for _ in range(rng.integers(2, 6)):
        x, y = rng.integers(0, WIDTH), rng.integers(0, HEIGHT)
        w, h = rng.integers(10, 70, 2)
        colour = tuple(int(c) for c in np.clip(rng.uniform(30, 225) + rng.normal(0, 40, 3), 0, 255))
        box = (x - w, y - h, x + w, y + h)
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
    # The background needs no anti-aliasing: enlarge it to the drawing size the cheap way.
    return image.resize((WIDTH * SUPERSAMPLE, HEIGHT * SUPERSAMPLE), Image.Resampling.NEAREST)


def render_face(
    row: dict[str, bool], look: dict[str, Any], rng: np.random.Generator, noise: np.ndarray
) -> Image.Image:
    """Draw one 178x218 RGB face showing the attributes in `row` for the person in `look`.

    `noise` is a unit Gaussian field larger than the image; each image takes a random window.
    Everything drawn for every face is sampled first, so an attribute's own random choices
    (a hat's colour, ...) never move the pose, the light or the noise.
    """
    image = _background(rng)
    pen = Pen(
        image,
        angle=math.radians(float(np.clip(rng.normal(0, 5), -10, 10))),
        scale=float(np.clip(rng.normal(1.0, 0.03), 0.94, 1.06)),
        shift=tuple(np.clip(rng.normal(0, 2.5, 2), -5, 5)),
    )
    camera = _sample_camera(rng)
    clothes = ACCESSORY_RGB[rng.integers(len(ACCESSORY_RGB))]
    gaze = float(rng.normal(0, 1.2))
    cx, cy = FACE_X, FACE_Y

    # Colours of this person.
    if row["Pale_Skin"]:
        skin = mix((246, 226, 214), (255, 236, 228), float(look["skin_tone"]))
    else:
        skin = mix((92, 58, 40), (226, 184, 156), float(look["skin_tone"]))
    hair_name = next((name for name, attr in HAIR_LABELS.items() if row[attr]), "other")
    hair = tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(HAIR_RGB[hair_name], look["hair_jitter"]))
    hair = contrast(hair, skin, 50)
    if row["Bald"]:
        brow = shade(skin, 0.45)
    else:
        brow = shade(hair, 0.55) if hair_name in ("blond", "gray") else shade(hair, 0.8)
    long_hair = bool(look["long_hair"]) and not row["Bald"]

    fw = 40 + float(look["face_width"]) + (7 if row["Chubby"] else 0) - (3 if row["Oval_Face"] else 0)
    fh = 54 + (3 if row["Oval_Face"] else 0)
    jaw = 0.9 if row["Male"] else 0.76  # how wide the chin stays: men squarer

    # Clothes and long hair behind the head, then the neck.
    pen.polygon([(-20, 230), (-5, 194), (50, 178), (128, 178), (183, 194), (198, 230)], clothes)
    if long_hair:
        top = ellipse_points(cx, cy - 6, fw + 10, fh + 12, 180, 360, 24)
        # The sides fall from the temples to the shoulders; wavy hair gets a rippled edge.
        ys = np.linspace(cy - 6, 200, 16)
        spread = 10 + 4 * (ys - ys[0]) / (ys[-1] - ys[0])
        if row["Wavy_Hair"]:
            spread = spread + 4 * np.sin((ys - ys[0]) / 5)
        right = np.stack([cx + fw + spread, ys], 1)
        left = np.stack([cx - fw - spread, ys], 1)[::-1]
        pen.polygon(np.vstack([top, right, left]), hair, outline=shade(hair, 0.6))
    pen.polygon([(cx - 15, cy + 30), (cx + 15, cy + 30), (cx + 17, 188), (cx - 17, 188)], shade(skin, 0.88))

    # Neck wear sits just under the chin, inside the part that every training crop keeps.
    if row["Wearing_Necktie"]:
        tie = ACCESSORY_RGB[rng.integers(len(ACCESSORY_RGB) - 2)]  # not white or black
        collar = [(cx - 26, 172), (cx - 20, 158), (cx, 172), (cx + 20, 158), (cx + 26, 172), (cx, 186)]
        pen.polygon(collar, (240, 240, 240), outline=(40, 40, 40))  # outlined: it shows on a white shirt too
        # The knot sits high, inside every training crop; the blade runs down past the crop.
        pen.polygon([(cx - 10, 158), (cx + 10, 158), (cx + 7, 173), (cx - 7, 173)], shade(tie, 0.7), outline=(20, 20, 20))
        pen.polygon([(cx - 7, 173), (cx + 7, 173), (cx + 13, 212), (cx, 222), (cx - 13, 212)], tie, outline=(20, 20, 20))
    if row["Wearing_Necklace"]:
        metal = ((232, 196, 70), (225, 225, 235), (250, 248, 240))[rng.integers(3)]
        beads = ellipse_points(cx, 156, 18, 13, 10, 170, 13)
        pen.dots(beads, shade(metal, 0.4), 3.8)  # a dark rim: pale beads show on pale skin too
        pen.dots(beads, metal, 2.9)

    # Ears, then the face oval with a jaw that narrows towards the chin.
    for sign in (-1, 1):
        pen.oval(cx + sign * (fw + 2), cy + 6, 6, 12, fill=shade(skin, 0.92))
    pen.polygon(face_outline(fw, fh, jaw), skin)
    if row["Bald"]:  # the scalp shines where hair would be: no hair colour is this bright
        pen.oval(cx - 6, cy - fh + 15, 24, 11, fill=mix(skin, (255, 255, 255), 0.6))
        pen.oval(cx - 9, cy - fh + 13, 13, 5, fill=(255, 255, 252))
    if row["Double_Chin"]:
        pen.line(ellipse_points(cx, cy + fh - 4, 14, 5, 20, 160, 10), shade(skin, 0.75), 1.5)
    if row["5_o_Clock_Shadow"]:  # stubble: a stipple of dark dots over the jaw
        angles = rng.uniform(0.15, 0.85, 140) * math.pi
        radii = rng.uniform(0.55, 0.97, 140)
        stubble = np.stack([cx + fw * jaw * radii * np.cos(angles), cy + 14 + (fh - 14) * radii * np.sin(angles)], 1)
        pen.dots(stubble, shade(skin, 0.55), 0.7)
    if row["Rosy_Cheeks"]:
        for sign in (-1, 1):
            pen.oval(cx + sign * 24, cy + 16, 10, 6.5, fill=mix(skin, (236, 70, 92), 0.9))

    if row["Eyeglasses"]:  # tinted lenses behind the eyes; the frames go on last, over the hair
        frame = ((16, 16, 16), (64, 38, 20), (36, 36, 64), (120, 20, 30))[rng.integers(4)]
        sunglasses = rng.random() < 0.3
        for sign in (-1, 1):
            pen.oval(cx + sign * 19, cy - 4, 13, 9, fill=mix(skin, (200, 222, 248), 0.5))
    draw_eyes(pen, row, look, skin, brow, gaze)
    draw_nose(pen, row, skin)
    draw_mouth(pen, row, look, skin)
    draw_facial_hair(pen, row, fw, fh, jaw, shade(skin, 0.35) if row["Bald"] else hair, skin)
    if not row["Bald"]:
        draw_hair_on_top(pen, row, fw, fh, long_hair, hair)

    if row["Wearing_Hat"]:
        colour = ACCESSORY_RGB[rng.integers(len(ACCESSORY_RGB))]
        band = ACCESSORY_RGB[rng.integers(len(ACCESSORY_RGB))]
        pen.polygon(ellipse_points(cx, cy - 42, fw + 8, 44, 180, 360, 24), colour)
        left, right = cx - fw - 8, cx + fw + 8
        pen.polygon([(left, cy - 46), (right, cy - 46), (right, cy - 40), (left, cy - 40)], band)
        pen.oval(cx, cy - 40, fw + 20, 6, fill=shade(colour, 0.75))  # the brim

    if row["Wearing_Earrings"]:
        metal = ((236, 200, 60), (226, 226, 236))[rng.integers(2)]
        hoops = rng.random() < 0.5
        for sign in (-1, 1):
            x = cx + sign * (fw + 3)
            # Big (14-18 px) and dark-rimmed, so gold shows on blond hair and silver on grey.
            if hoops:
                pen.oval(x, cy + 28, 7.5, 9, outline=shade(metal, 0.4), width=4.0)
                pen.oval(x, cy + 28, 7.5, 9, outline=metal, width=2.4)
            else:  # a stud with a drop below it
                pen.oval(x, cy + 21, 4, 4, fill=metal, outline=shade(metal, 0.4), width=1.2)
                pen.oval(x, cy + 31, 4.5, 6.5, fill=metal, outline=shade(metal, 0.4), width=1.2)

    if row["Eyeglasses"]:
        for sign in (-1, 1):
            x = cx + sign * 19
            pen.oval(x, cy - 4, 13, 9, fill=(22, 24, 32) if sunglasses else None, outline=frame, width=3.5)
            pen.line([(x - 6, cy - 1), (x - 2, cy - 9)], (236, 236, 244), 1.5)  # glare on the lens
            pen.line([(cx + sign * 32, cy - 6), (cx + sign * (fw + 1), cy - 8)], frame, 2.5)
        pen.line([(cx - 6, cy - 6), (cx, cy - 8), (cx + 6, cy - 6)], frame, 2.5)

    return _finish(image.reduce(SUPERSAMPLE), row["Blurry"], camera, noise)


def _sample_camera(rng: np.random.Generator) -> dict[str, float]:
    return {
        "blur": rng.uniform(2.2, 3.5),  # Gaussian radius, for Blurry images only
        "light_level": rng.uniform(0.85, 1.12),
        "light_slope": rng.uniform(0, 0.35),  # uneven light across the image
        "light_direction": rng.uniform(0, 2 * math.pi),
        "noise_sigma": rng.uniform(2, 7),
        "noise_top": rng.integers(0, NOISE_SHAPE[0] - HEIGHT + 1),
        "noise_left": rng.integers(0, NOISE_SHAPE[1] - WIDTH + 1),
    }


def _finish(image: Image.Image, blurry: bool, camera: dict[str, float], noise: np.ndarray) -> Image.Image:
    """Camera effects: blur for Blurry images, then uneven light and sensor noise on every image."""
    if blurry:
        image = image.filter(ImageFilter.GaussianBlur(float(camera["blur"])))
    pixels = np.asarray(image, dtype=np.float32)
    ys, xs = _PIXEL_GRID
    direction = camera["light_direction"]
    ramp = (xs * math.cos(direction) + ys * math.sin(direction)) / WIDTH
    light = np.float32(camera["light_level"]) + np.float32(camera["light_slope"]) * ramp
    pixels *= light[..., None]
    # A window of the shared noise field: fresh noise per image would cost more than the face.
    top, left = camera["noise_top"], camera["noise_left"]
    pixels += np.float32(camera["noise_sigma"]) * noise[top : top + HEIGHT, left : left + WIDTH]
    return Image.fromarray(np.clip(pixels, 0, 255, out=pixels).astype(np.uint8), "RGB")
