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

#: The 150 ADE20K classes (SceneParsing benchmark, ADEChallengeData2016); the index is the
#: class id, the stored annotation value minus one (0, "other objects", is ignored). Names as
#: in mmsegmentation's `ADE20KDataset` (`mmseg/datasets/ade.py`, from `objectInfo150`).
ADE20K_CLASSES = (
    "wall",
    "building",
    "sky",
    "floor",
    "tree",
    "ceiling",
    "road",
    "bed",
    "windowpane",
    "grass",
    "cabinet",
    "sidewalk",
    "person",
    "earth",
    "door",
    "table",
    "mountain",
    "plant",
    "curtain",
    "chair",
    "car",
    "water",
    "painting",
    "sofa",
    "shelf",
    "house",
    "sea",
    "mirror",
    "rug",
    "field",
    "armchair",
    "seat",
    "fence",
    "desk",
    "rock",
    "wardrobe",
    "lamp",
    "bathtub",
    "railing",
    "cushion",
    "base",
    "box",
    "column",
    "signboard",
    "chest of drawers",
    "counter",
    "sand",
    "sink",
    "skyscraper",
    "fireplace",
    "refrigerator",
    "grandstand",
    "path",
    "stairs",
    "runway",
    "case",
    "pool table",
    "pillow",
    "screen door",
    "stairway",
    "river",
    "bridge",
    "bookcase",
    "blind",
    "coffee table",
    "toilet",
    "flower",
    "book",
    "hill",
    "bench",
    "countertop",
    "stove",
    "palm",
    "kitchen island",
    "computer",
    "swivel chair",
    "boat",
    "bar",
    "arcade machine",
    "hovel",
    "bus",
    "towel",
    "light",
    "truck",
    "tower",
    "chandelier",
    "awning",
    "streetlight",
    "booth",
    "television receiver",
    "airplane",
    "dirt track",
    "apparel",
    "pole",
    "land",
    "bannister",
    "escalator",
    "ottoman",
    "bottle",
    "buffet",
    "poster",
    "stage",
    "van",
    "ship",
    "fountain",
    "conveyer belt",
    "canopy",
    "washer",
    "plaything",
    "swimming pool",
    "stool",
    "barrel",
    "basket",
    "waterfall",
    "tent",
    "bag",
    "minibike",
    "cradle",
    "oven",
    "ball",
    "food",
    "step",
    "tank",
    "trade name",
    "microwave",
    "pot",
    "animal",
    "bicycle",
    "lake",
    "dishwasher",
    "screen",
    "blanket",
    "sculpture",
    "hood",
    "sconce",
    "vase",
    "traffic light",
    "tray",
    "ashcan",
    "fan",
    "pier",
    "crt screen",
    "plate",
    "monitor",
    "bulletin board",
    "shower",
    "radiator",
    "glass",
    "clock",
    "flag",
)

#: Colours of the ADE20K classes: the palette of mmsegmentation's `ADE20KDataset`
#: (`mmseg/datasets/ade.py`), one RGB triple per class (road and skyscraper share one colour
#: there, kept as published).
ADE20K_COLORS = (
    (120, 120, 120),
    (180, 120, 120),
    (6, 230, 230),
    (80, 50, 50),
    (4, 200, 3),
    (120, 120, 80),
    (140, 140, 140),
    (204, 5, 255),
    (230, 230, 230),
    (4, 250, 7),
    (224, 5, 255),
    (235, 255, 7),
    (150, 5, 61),
    (120, 120, 70),
    (8, 255, 51),
    (255, 6, 82),
    (143, 255, 140),
    (204, 255, 4),
    (255, 51, 7),
    (204, 70, 3),
    (0, 102, 200),
    (61, 230, 250),
    (255, 6, 51),
    (11, 102, 255),
    (255, 7, 71),
    (255, 9, 224),
    (9, 7, 230),
    (220, 220, 220),
    (255, 9, 92),
    (112, 9, 255),
    (8, 255, 214),
    (7, 255, 224),
    (255, 184, 6),
    (10, 255, 71),
    (255, 41, 10),
    (7, 255, 255),
    (224, 255, 8),
    (102, 8, 255),
    (255, 61, 6),
    (255, 194, 7),
    (255, 122, 8),
    (0, 255, 20),
    (255, 8, 41),
    (255, 5, 153),
    (6, 51, 255),
    (235, 12, 255),
    (160, 150, 20),
    (0, 163, 255),
    (140, 140, 140),
    (250, 10, 15),
    (20, 255, 0),
    (31, 255, 0),
    (255, 31, 0),
    (255, 224, 0),
    (153, 255, 0),
    (0, 0, 255),
    (255, 71, 0),
    (0, 235, 255),
    (0, 173, 255),
    (31, 0, 255),
    (11, 200, 200),
    (255, 82, 0),
    (0, 255, 245),
    (0, 61, 255),
    (0, 255, 112),
    (0, 255, 133),
    (255, 0, 0),
    (255, 163, 0),
    (255, 102, 0),
    (194, 255, 0),
    (0, 143, 255),
    (51, 255, 0),
    (0, 82, 255),
    (0, 255, 41),
    (0, 255, 173),
    (10, 0, 255),
    (173, 255, 0),
    (0, 255, 153),
    (255, 92, 0),
    (255, 0, 255),
    (255, 0, 245),
    (255, 0, 102),
    (255, 173, 0),
    (255, 0, 20),
    (255, 184, 184),
    (0, 31, 255),
    (0, 255, 61),
    (0, 71, 255),
    (255, 0, 204),
    (0, 255, 194),
    (0, 255, 82),
    (0, 10, 255),
    (0, 112, 255),
    (51, 0, 255),
    (0, 194, 255),
    (0, 122, 255),
    (0, 255, 163),
    (255, 153, 0),
    (0, 255, 10),
    (255, 112, 0),
    (143, 255, 0),
    (82, 0, 255),
    (163, 255, 0),
    (255, 235, 0),
    (8, 184, 170),
    (133, 0, 255),
    (0, 255, 92),
    (184, 0, 255),
    (255, 0, 31),
    (0, 184, 255),
    (0, 214, 255),
    (255, 0, 112),
    (92, 255, 0),
    (0, 224, 255),
    (112, 224, 255),
    (70, 184, 160),
    (163, 0, 255),
    (153, 0, 255),
    (71, 255, 0),
    (255, 0, 163),
    (255, 204, 0),
    (255, 0, 143),
    (0, 255, 235),
    (133, 255, 0),
    (255, 0, 235),
    (245, 0, 255),
    (255, 0, 122),
    (255, 245, 0),
    (10, 190, 212),
    (214, 255, 0),
    (0, 204, 255),
    (20, 0, 255),
    (255, 255, 0),
    (0, 153, 255),
    (0, 41, 255),
    (0, 255, 204),
    (41, 0, 255),
    (41, 255, 0),
    (173, 0, 255),
    (0, 245, 255),
    (71, 0, 255),
    (122, 0, 255),
    (0, 255, 184),
    (0, 92, 255),
    (184, 255, 0),
    (0, 133, 255),
    (255, 214, 0),
    (25, 194, 194),
    (102, 255, 0),
    (92, 0, 255),
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
            `"cityscapes"` (19 training classes, Cityscapes colours),
            `"ade20k"` (150 SceneParsing classes, mmsegmentation's palette) or
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
    elif name == "ade20k":
        names, colors = ADE20K_CLASSES, np.array(ADE20K_COLORS)
    elif name == "synthetic":
        names, colors = SYNTHETIC_CLASSES, voc_palette(len(SYNTHETIC_CLASSES))
    else:
        raise ValueError(
            "Expected `name` to be 'voc', 'cityscapes', 'ade20k' or 'synthetic'. "
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
