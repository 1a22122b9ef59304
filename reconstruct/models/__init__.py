"""Optional model code: DINOv2 backbones (through timm) and their weights."""
