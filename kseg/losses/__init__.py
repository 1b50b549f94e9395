"""kseg.losses."""
