"""Tooling that builds the small stand-in backbone: its synthetic corpus (``corpus``), its training
recipe (``backbone_training``) and the ``python -m recon.backbone`` command line (``backbone_cli``).

Nothing that trains a codebook or runs inference imports this package: it may import the runtime
modules, never the other way round.
"""
