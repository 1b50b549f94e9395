"""kseg.backbones."""
