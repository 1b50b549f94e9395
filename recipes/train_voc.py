"""Trains a kseg segmentation model on PASCAL VOC 2012, or on the built-in synthetic data.

    python recipes/train_voc.py                       # compact demo on synthetic data
    python recipes/train_voc.py --data-dir ~/data --model deeplabv3plus   # real VOC run
    python recipes/train_voc.py --smoke               # seconds: exercises every part
    tensorboard --logdir runs                         # watch it

This is `recipes/train.py` with the dataset chosen by `--data-dir`: PASCAL
VOC 2012 (`--dataset voc`) with it, kseg's synthetic dataset (`--dataset
synthetic`, the compact demo configuration) without. Every other option, the
configurations and the outputs are those of train.py (see its docstring).
"""

import train


def main(argv=None):
    """Runs train.py's recipe with the dataset chosen by --data-dir."""
    return train.main(argv, prog="train_voc.py", voc_entry=True)


if __name__ == "__main__":
    main()
