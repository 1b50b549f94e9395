"""Class names and colour palettes of the datasets, and helpers that colour label maps."""

import numpy as np

#: The 21 PASCAL VOC 2012 class names; the index is the class id.
VOC_CLASSES = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)

#: The 19 Cityscapes training classes (`trainId` 0-18); the index is the class id.
CITYSCAPES_CLASSES = (
    "road",
    "sidewalk",
    "building",
    "wall",
    "fence",
    "pole",
    "traffic light",
    "traffic sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "train",
    "motorcycle",
    "bicycle",
)

#: Colours of the Cityscapes training classes (cityscapesScripts `labels.py`).
CITYSCAPES_COLORS = (
    (128, 64, 128),
    (244, 35, 232),
    (70, 70, 70),
    (102, 102, 156),
    (190, 153, 153),
    (153, 153, 153),
    (250, 170, 30),
    (220, 220, 0),
    (107, 142, 35),
    (152, 251, 152),
    (70, 130, 180),
    (220, 20, 60),
    (255, 0, 0),
    (0, 0, 142),
    (0, 0, 70),
    (0, 60, 100),
    (0, 80, 100),
    (0, 0, 230),
    (119, 11, 32),
)

#: Names of the 6 classes of kseg's synthetic dataset (by the colour of their shapes).
SYNTHETIC_CLASSES = ("background", "red", "green", "blue", "yellow", "magenta")

#: The ignore value of every dataset kseg reads.
IGNORE_INDEX = 255


def dataset_description(name):
    """The description of a known dataset that trained models carry.

    A plain dict, `{"name", "class_names", "palette", "ignore_index"}`: the
    class names in label order, one RGB colour per class (`[r, g, b]` lists)
    and the label value that is not a class. Attach it to a model with
    `kseg.models.with_dataset(model, description)`, so that the saved model
    tells prediction and evaluation what its outputs mean.

    Args:
        name: `"voc"` (PASCAL VOC 2012, 21 classes, VOC palette),
            `"cityscapes"` (19 training classes, Cityscapes colours) or
            `"synthetic"` (kseg's synthetic set of 6 classes, VOC palette).

    Returns:
        A new dict (JSON-serialisable).

    Example:

    >>> dataset_description("voc")["class_names"][15]
    'person'
    """
    if name == "voc":
        names, colors = VOC_CLASSES, voc_palette(len(VOC_CLASSES))
    elif name == "cityscapes":
        names, colors = CITYSCAPES_CLASSES, np.array(CITYSCAPES_COLORS)
    elif name == "synthetic":
        names, colors = SYNTHETIC_CLASSES, voc_palette(len(SYNTHETIC_CLASSES))
    else:
        raise ValueError(
            "Expected `name` to be 'voc', 'cityscapes' or 'synthetic'. "
            f"Received: name={name!r}"
        )
    return {
        "name": name,
        "class_names": list(names),
        "palette": [[int(v) for v in c] for c in colors],
        "ignore_index": IGNORE_INDEX,
    }


def voc_palette(num_colors=256):
    """Returns the PASCAL VOC colour map as a `(num_colors, 3)` uint8 array.

    This is the palette stored in the VOC `SegmentationClass` PNGs: the bits
    of the class id are spread over the high bits of R, G and B (the
    `labelcolormap` of the VOC development kit, `VOCdevkit/VOCcode`). Class 0
    is black, class 1 (aeroplane) is (128, 0, 0) and the ignore value 255 is
    (224, 224, 192), the cream colour of the object boundaries.

    Args:
        num_colors: number of palette entries, 1 to 256. Defaults to 256.

    Returns:
        A uint8 NumPy array of shape `(num_colors, 3)`.
    """
    if isinstance(num_colors, bool) or not isinstance(num_colors, (int, np.integer)):
        raise TypeError(
            f"Expected `num_colors` to be an integer. Received: num_colors={num_colors!r}"
        )
    if not 1 <= num_colors <= 256:
        raise ValueError(
            f"Expected `num_colors` to be in [1, 256]. Received: num_colors={num_colors}"
        )
    palette = np.zeros((num_colors, 3), dtype=np.uint8)
    for index in range(num_colors):
        value = index
        r = g = b = 0
        for shift in range(7, -1, -1):
            r |= ((value >> 0) & 1) << shift
            g |= ((value >> 1) & 1) << shift
            b |= ((value >> 2) & 1) << shift
            value >>= 3
        palette[index] = (r, g, b)
    return palette


def colorize(mask, palette=None):
    """Colours an integer label map with a palette.

    Args:
        mask: integer array of shape `(..., H, W)` or `(..., H, W, 1)` with
            values in `[0, 255]` (255 is the ignore value and gets the VOC
            boundary colour).
        palette: `(N, 3)` uint8 array, N >= 256 or greater than the largest
            label. Defaults to `voc_palette()`.

    Returns:
        A uint8 array of shape `(..., H, W, 3)`.

    Example:

    >>> rgb = colorize(np.array([[0, 1], [15, 255]]))
    >>> rgb[0, 1].tolist()
    [128, 0, 0]
    """
    palette = voc_palette() if palette is None else np.asarray(palette, dtype=np.uint8)
    if palette.ndim != 2 or palette.shape[1] != 3:
        raise ValueError(
            f"Expected `palette` of shape (N, 3). Received: palette.shape={palette.shape}"
        )
    mask = np.asarray(mask)
    if mask.ndim >= 3 and mask.shape[-1] == 1:
        mask = mask[..., 0]
    if not np.issubdtype(mask.dtype, np.integer):
        raise TypeError(f"Expected an integer `mask`. Received: mask.dtype={mask.dtype}")
    if mask.size and (mask.min() < 0 or mask.max() >= len(palette)):
        raise ValueError(
            f"Expected `mask` values in [0, {len(palette) - 1}] to index the palette. "
            f"Received: values in [{mask.min()}, {mask.max()}]"
        )
    return palette[mask]


def overlay(image, mask, alpha=0.5, palette=None, ignore_index=255):
    """Blends a coloured label map over an RGB image.

    Args:
        image: `(H, W, 3)` array with values in `[0, 255]`.
        mask: `(H, W)` or `(H, W, 1)` integer label map.
        alpha: weight of the label colours, in `[0, 1]`. Defaults to 0.5.
        palette: see `colorize`.
        ignore_index: pixels with this label keep the image colour. Defaults
            to 255.

    Returns:
        A uint8 `(H, W, 3)` array.
    """
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"Expected `alpha` in [0, 1]. Received: alpha={alpha}")
    image = np.asarray(image, dtype=np.float32)
    mask = np.asarray(mask)
    if mask.ndim == 3:
        mask = mask[..., 0]
    if image.shape[:2] != mask.shape:
        raise ValueError(
            "Expected `image` and `mask` of the same height and width. "
            f"Received: image.shape={image.shape}, mask.shape={mask.shape}"
        )
    colors = colorize(mask, palette).astype(np.float32)
    blended = (1.0 - alpha) * image + alpha * colors
    blended = np.where((mask == ignore_index)[..., None], image, blended)
    return np.clip(np.round(blended), 0, 255).astype(np.uint8)
