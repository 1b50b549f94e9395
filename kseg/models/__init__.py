"""kseg.models."""
