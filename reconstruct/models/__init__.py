"""Optional model code, importing no stage module: DINOv2 backbones through timm, their weights
and the one loader (``dinov2.py``), and the patch matcher's features (``patch_features.py``) and
matching rules (``patch_matcher.py``)."""
