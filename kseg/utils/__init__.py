"""Utilities: convolution output sizes and receptive-field calculators."""

from kseg.utils.receptive_field import (
    ReceptiveFieldRecord,
    conv_output_size,
    format_receptive_field,
    print_receptive_field,
    receptive_field,
)

__all__ = [
    "conv_output_size",
    "ReceptiveFieldRecord",
    "receptive_field",
    "format_receptive_field",
    "print_receptive_field",
]
