"""Evaluates a checkpoint on PASCAL VOC 2012 val (or the synthetic val set) with optional TTA.

    python recipes/evaluate_voc.py runs/deeplabv3plus-.../best.keras --data-dir ~/data
    python recipes/evaluate_voc.py best.keras --data-dir ~/data --crop-size 512 \\
        --scales 0.5 0.75 1.0 1.25 1.5 1.75 --flip          # DeepLab's multi-scale + flip test

This is `recipes/evaluate.py` with the dataset chosen by `--data-dir`: PASCAL
VOC 2012 with it (`--split`, default val; sliding window 512 by default: a VOC
image, at most 500 px, fits one window), kseg's synthetic validation set
without (whole images). See evaluate.py for the options and the output.
"""

import evaluate


def main(argv=None):
    """Runs evaluate.py with the dataset chosen by --data-dir."""
    return evaluate.main(argv, prog="evaluate_voc.py", voc_entry=True)


if __name__ == "__main__":
    main()
