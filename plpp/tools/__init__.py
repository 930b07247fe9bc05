"""Small command-line helpers used by ``scripts/plpp/`` (the demo) and by users directly.

* ``python -m plpp.tools.check_weights NAME`` — can the CLIP weights be had (before any training)?
* ``python -m plpp.tools.prepare_fashion_mnist --root DIR`` — Fashion-MNIST images and split, once.
* ``python -m plpp.tools.compare RUN_DIR ...`` — accuracy / macro-F1 of finished runs side by side.
* ``python -m plpp.tools.random_clip --arch ViT-B/32 -o clip_random.pt`` — a random-weight CLIP file
  for offline pipeline checks (its numbers mean nothing, and the file is marked so tables say so).
* ``python -m plpp.tools.run_status DIR --mode train -- <train.py args>`` — is DIR finished with that
  config? (the protocol scripts' and the grid's test before they skip a run).
"""
