"""kseg.metrics."""
