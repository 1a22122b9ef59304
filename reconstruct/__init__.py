"""reconstruct: photos in, COLMAP model out (DINOv2 pairs, ALIKED + LightGlue, pycolmap)."""

__version__ = "0.1.0"
