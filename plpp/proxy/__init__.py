"""The proxy world: synthetic image–caption data and a small CLIP pretrained on it, on a CPU, offline.

A controlled stand-in for real CLIP weights, for method development and regression tests: every
accuracy it gives is measured on synthetic images, never evidence about CLIP. ``world`` defines the
attributes, classes, captions and the renderer; ``pretrain`` trains the stock ``clip.model.CLIP`` on
it; ``build`` writes the weights file and the dataset (``python -m plpp.tools.proxy_world``).
"""
