"""kseg.utils."""
