"""kseg.training."""
