"""What the proxy world holds (attributes, classes), how it is described (captions) and how it is drawn.

Every image shows one object. Its class is a colour and a shape ("red circle": 8 × 6 = 48 classes);
its size, fill, background and position vary within a class and are named by some captions only.
Two rendering styles share the classes: ``photo`` (a filled shape on a plain background) and
``drawing`` (a coloured outline on paper), the second one for cross-domain protocols.

Labels run colour by colour (red circle, red square, ..., brown star), so ``DATASET.SUBSAMPLE_CLASSES``
makes the 24 classes of the first four colours the base classes and the other 24 the new ones: new
classes have colour words the prompt never trained with, and each half holds every shape, so the
confusions that make the task hard (a square and a diamond, a star and a cross) stay inside each half.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F

#: Colour names and their RGB in [0, 1].
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.88, 0.12, 0.10),
    "green": (0.12, 0.70, 0.20),
    "blue": (0.15, 0.28, 0.92),
    "yellow": (0.95, 0.88, 0.12),
    "purple": (0.55, 0.18, 0.72),
    "orange": (1.00, 0.55, 0.05),
    "pink": (1.00, 0.55, 0.75),
    "brown": (0.50, 0.30, 0.12),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "cross", "star")
SIZES: tuple[str, ...] = ("small", "large")
FILLS: tuple[str, ...] = ("plain", "striped")
#: Background name and grey level of the photo style (drawings are always on light paper).
BACKGROUNDS: dict[str, float] = {"white": 0.93, "gray": 0.55, "black": 0.15}
#: Position name, its phrase in captions and the object's centre (x right, y down, in [-1, 1]).
POSITIONS: dict[str, tuple[str, tuple[float, float]]] = {
    "left": ("on the left", (-0.5, 0.0)),
    "right": ("on the right", (0.5, 0.0)),
    "top": ("at the top", (0.0, -0.5)),
    "bottom": ("at the bottom", (0.0, 0.5)),
    "middle": ("in the middle", (0.0, 0.0)),
}
STYLES: tuple[str, ...] = ("photo", "drawing")

#: Captions of each style. Most name the colour and the shape; some name only one of them, which makes
#: the in-batch negatives that share the other attribute teach it (shape is the slower one to learn).
TEMPLATES: dict[str, tuple[str, ...]] = {
    "photo": (
        "a photo of a {colour} {shape}.",
        "a photo of a {size} {colour} {shape}.",
        "a {colour} {shape} on a {background} background.",
        "a {fill} {colour} {shape} {position}.",
        "there is a {size} {colour} {shape} {position}.",
        "a {shape} that is {colour}.",
        "a {size} {fill} {colour} {shape} on {background}.",
        "{position}, a {colour} {shape}.",
        "a photo of a {shape}.",
        "a {size} {shape} {position}.",
        "a {fill} {shape} on a {background} background.",
        "something {colour} {position}.",
    ),
    "drawing": (
        "a drawing of a {colour} {shape}.",
        "a sketch of a {size} {colour} {shape}.",
        "a {colour} outline of a {shape} {position}.",
        "a drawing of a {shape} in {colour}.",
        "a drawing of a {shape}.",
        "a sketch of a {shape} {position}.",
    ),
}

RESOLUTION = 32  # image side in pixels
SUPERSAMPLE = 2  # drawn at RESOLUTION * SUPERSAMPLE, then averaged down (anti-aliasing)
NOISE = 0.025  # per-pixel Gaussian noise (std, on [0, 1] intensities)


@dataclass(frozen=True)
class ProxyClass:
    """A class of the world: a colour and a shape, with its label (base classes first)."""

    label: int
    colour: int
    shape: int

    @property
    def name(self) -> str:
        return f"{list(COLOURS)[self.colour]} {SHAPES[self.shape]}"

    @property
    def folder(self) -> str:
        return self.name.replace(" ", "_")


def world_classes() -> list[ProxyClass]:
    """The 48 classes in label order: colour by colour, shapes in ``SHAPES`` order within a colour."""
    return [ProxyClass(c * len(SHAPES) + s, c, s) for c in range(len(COLOURS)) for s in range(len(SHAPES))]


def pretraining_pairs() -> list[tuple[int, int]]:
    """The (colour, shape) pairs in the order pretraining draws them from: part of every build's random
    stream, so it is fixed (changing it changes every proxy CLIP)."""
    pairs = [(c, s) for c in range(len(COLOURS)) for s in range(len(SHAPES))]
    return [p for p in pairs if (p[0] + p[1]) % 2 == 0] + [p for p in pairs if (p[0] + p[1]) % 2 == 1]


@dataclass
class Scenes:
    """A batch of scene descriptions: one ``LongTensor [N]`` per attribute (indices into the tables above)."""

    colour: torch.Tensor
    shape: torch.Tensor
    size: torch.Tensor
    fill: torch.Tensor
    background: torch.Tensor
    position: torch.Tensor
    style: torch.Tensor

    def __len__(self) -> int:
        return self.colour.shape[0]


def sample_scenes(n: int, gen: torch.Generator, classes: torch.Tensor | None = None,
                  drawing_fraction: float = 0.0) -> Scenes:
    """``n`` scenes with uniform nuisance attributes; ``classes`` [n] fixes each scene's class (labels).

    Without ``classes`` the (colour, shape) pair is uniform over the world. ``drawing_fraction`` of the
    scenes (drawn at random) are in the drawing style, the rest photos.
    """
    if classes is None:
        pairs = pretraining_pairs()
        drawn = [pairs[int(i)] for i in torch.randint(len(pairs), (n,), generator=gen)]
    else:
        table = world_classes()
        drawn = [(table[int(y)].colour, table[int(y)].shape) for y in classes]
    colour = torch.tensor([c for c, _ in drawn])
    shape = torch.tensor([s for _, s in drawn])

    def uniform(k: int) -> torch.Tensor:
        return torch.randint(k, (n,), generator=gen)

    return Scenes(colour=colour, shape=shape, size=uniform(len(SIZES)), fill=uniform(len(FILLS)),
                  background=uniform(len(BACKGROUNDS)), position=uniform(len(POSITIONS)),
                  style=(torch.rand(n, generator=gen) < drawing_fraction).long())


def caption(scenes: Scenes, i: int, template: int) -> str:
    """The caption of scene ``i`` with template number ``template`` of its style."""
    style = STYLES[int(scenes.style[i])]
    return TEMPLATES[style][template].format(
        colour=list(COLOURS)[int(scenes.colour[i])], shape=SHAPES[int(scenes.shape[i])],
        size=SIZES[int(scenes.size[i])], fill=FILLS[int(scenes.fill[i])],
        background=list(BACKGROUNDS)[int(scenes.background[i])],
        position=list(POSITIONS.values())[int(scenes.position[i])][0])


def caption_words() -> list[str]:
    """Every piece of text a caption can be made of (template text and attribute values), sorted.

    CLIP's tokenizer splits text into words and punctuation before its byte-pair encoding, so the tokens
    of these pieces are all the tokens any caption can contain.
    """
    pieces = {re.sub(r"\{\w+\}", " ", t) for templates in TEMPLATES.values() for t in templates}
    pieces |= set(COLOURS) | set(SHAPES) | set(SIZES) | set(FILLS) | set(BACKGROUNDS)
    pieces |= {phrase for phrase, _ in POSITIONS.values()}
    return sorted(pieces)


def random_captions(scenes: Scenes, gen: torch.Generator) -> list[str]:
    """One caption per scene, each with a template drawn uniformly from its style's templates."""
    draws = torch.rand(len(scenes), generator=gen)
    out = []
    for i in range(len(scenes)):
        n_templates = len(TEMPLATES[STYLES[int(scenes.style[i])]])
        out.append(caption(scenes, i, min(int(draws[i] * n_templates), n_templates - 1)))
    return out


def _star_radius(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Boundary radius of a 5-pointed star (one point upwards) in the direction of each point."""
    phase = (torch.atan2(y, x) * 5 / (2 * math.pi) + 0.25) % 1.0
    return 0.45 + 0.55 * (1 - 2 * (phase - 0.5).abs()) ** 1.5


#: Inside test of each shape (in ``SHAPES`` order) in local coordinates, unit radius, y pointing down.
_INSIDE = (
    lambda x, y: x * x + y * y <= 1.0,  # circle
    lambda x, y: torch.maximum(x.abs(), y.abs()) <= 0.82,  # square
    lambda x, y: (y <= 0.75) & (x.abs() <= (y + 0.95) * 0.6),  # triangle, apex up
    lambda x, y: x.abs() + y.abs() <= 1.0,  # diamond
    lambda x, y: ((x.abs() <= 0.3) & (y.abs() <= 0.95)) | ((y.abs() <= 0.3) & (x.abs() <= 0.95)),  # cross
    lambda x, y: x * x + y * y <= _star_radius(x, y) ** 2,  # star
)


def _shape_mask(shape: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Inside-mask ``[N, S, S]`` (float) of each scene's shape at local coordinates ``x``, ``y`` [N, S, S]."""
    mask = torch.zeros(x.shape)
    for k, inside in enumerate(_INSIDE):
        rows = (shape == k).nonzero().flatten()
        if len(rows):
            mask[rows] = inside(x[rows], y[rows]).float()
    return mask


def render(scenes: Scenes, gen: torch.Generator) -> torch.Tensor:
    """Draw the scenes: ``uint8 [N, 3, RESOLUTION, RESOLUTION]``; jitter and noise come from ``gen``."""
    n = len(scenes)
    side = RESOLUTION * SUPERSAMPLE
    coords = (torch.arange(side, dtype=torch.float32) + 0.5) / side * 2 - 1
    v, u = torch.meshgrid(coords, coords, indexing="ij")  # v: rows (down), u: columns (right)

    def jitter(scale: float, *shape: int) -> torch.Tensor:
        return (torch.rand(*shape, generator=gen) * 2 - 1) * scale

    centres = torch.tensor([c for _, c in POSITIONS.values()])[scenes.position] + jitter(0.0, n, 2)
    small = 0.35 + jitter(0.02, n)
    large = 0.5 + jitter(0.02, n)
    radius = torch.where(scenes.size == 0, small, large)
    angle = jitter(0.05, n)
    du = (u[None] - centres[:, 0, None, None]) / radius[:, None, None]
    dv = (v[None] - centres[:, 1, None, None]) / radius[:, None, None]
    cos, sin = torch.cos(angle)[:, None, None], torch.sin(angle)[:, None, None]
    x, y = cos * du + sin * dv, -sin * du + cos * dv
    mask = _shape_mask(scenes.shape, x, y)[:, None]  # [N, 1, S, S]

    colour = (torch.tensor(list(COLOURS.values()))[scenes.colour] + jitter(0.05, n, 3)).clamp(0, 1)
    colour = colour[:, :, None, None]
    grey = torch.tensor(list(BACKGROUNDS.values()))[scenes.background] + jitter(0.04, n)
    stripe_phase = torch.rand(n, 1, 1, generator=gen) * 2
    paper = 0.92 + jitter(0.04, n)

    image = torch.empty(n, 3, side, side)
    photo = (scenes.style == 0).nonzero().flatten()
    if len(photo):
        stripes = torch.floor((u + v)[None] / 0.16 + stripe_phase[photo]) % 2  # diagonal bands
        shade = 1 - 0.3 * stripes * (scenes.fill[photo] == 1).float()[:, None, None]
        m = mask[photo]
        image[photo] = grey[photo, None, None, None] * (1 - m) + colour[photo] * (shade[:, None] * m)
    drawing = (scenes.style == 1).nonzero().flatten()
    if len(drawing):
        m = mask[drawing]
        outline = m - (1 - F.max_pool2d(1 - m, kernel_size=5, stride=1, padding=2))  # mask minus its erosion
        image[drawing] = paper[drawing, None, None, None] * (1 - outline) + colour[drawing] * outline

    image = F.avg_pool2d(image, SUPERSAMPLE)
    image = image + torch.randn(image.shape, generator=gen) * NOISE
    return (image.clamp(0, 1) * 255).round().to(torch.uint8)
