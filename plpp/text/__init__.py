"""The text side of CLIP prompt learning: one encoder for every host, fast where exact (see ``encoder``).

A host declares its prompts (``TextLayout``: where they stop being shared, where each ends; ``TextPrompts``:
the tensors of one pass) and calls ``TextEncoder``; ``TextTower`` adapts a backbone's text transformer.
"""

from .encoder import TEXT_PASS_CHOICES, TextEncoder, TextOutput
from .layout import TextLayout, TextPrompts, TextWork, text_layout
from .tower import ClipTextTower, TextTower, text_tower

__all__ = ["TEXT_PASS_CHOICES", "ClipTextTower", "TextEncoder", "TextLayout", "TextOutput", "TextPrompts",
           "TextTower", "TextWork", "text_layout", "text_tower"]
