"""The permutohedral lattice (Adams, Baek and Davis, Eurographics 2010), built in NumPy.

A fast approximation of Gaussian filtering in a d-dimensional feature space,
`out_i = sum_j exp(-|f_i - f_j|^2 / 2) v_j`, in three linear steps:

1. splat: each point is written, with its barycentric weights, onto the d + 1
   vertices of the simplex of the lattice `A*_d` that encloses it;
2. blur: the lattice values are convolved with the kernel [1/2, 1, 1/2] along each
   of the d + 1 lattice directions in turn;
3. slice: each point reads the blurred values of its vertices back with the same
   weights.

Only the lattice points that some point touches exist; a missing neighbour reads 0.
`build_lattice` does the geometry once per set of features (sorting, hashing the
vertices, finding the neighbours) and returns integer indices and weights, so that
`filter` (keras.ops) is gathers, products and sorted segment sums.

The features are scaled as in Adams et al. (sec. 3.1) and in Krähenbühl and Koltun's
released code: by `sqrt(2/3) (d + 1) / sqrt((i + 1)(i + 2))` on axis i, so that the
blur approximates a Gaussian of standard deviation 1 in the original feature units.
The approximation's overall gain (their constant `1 / (1 + 2^-d)`) is left out: the
dense CRF normalises every kernel, so a constant factor cancels.
"""

import numpy as np
from keras import ops

from kseg._backend import segment_sum_rows


def build_lattice(features):
    """The lattice of `features` `(N, d)` (float64 NumPy) as a dict of NumPy arrays.

    Returns:
        A dict with
        `vertex` `(N, d + 1)` int32: the lattice point of each simplex vertex of each point;
        `weight` `(N, d + 1)` float32: the barycentric weights of those vertices (each row
        sums to 1);
        `neighbours` `(d + 1, 2, M + 1)` int32: the two neighbours of each lattice point
        along each direction, `M` (a row of zeros) where the neighbour does not exist;
        `size` (int): M, the number of lattice points.
    """
    f = np.asarray(features, np.float64)
    n, d = f.shape
    # Scaling and elevation onto the hyperplane x . 1 = 0 of R^(d+1): Adams et al. 2010,
    # sec. 3.1, the matrix E (written here with suffix sums of the scaled features).
    scaled = f * (np.sqrt(2.0 / 3.0) * (d + 1) / np.sqrt(np.arange(1, d + 1) * np.arange(2, d + 2)))
    suffix = np.concatenate([np.cumsum(scaled[:, ::-1], axis=1)[:, ::-1], np.zeros((n, 1))], 1)
    elevated = suffix.copy()
    elevated[:, 1:] -= np.arange(1, d + 1) * scaled
    # The closest lattice point of remainder 0 (coordinates multiples of d + 1), then the
    # ranks of the differences; the rounding is made consistent (coordinates summing to 0)
    # by moving the extreme ranks (Adams et al., sec. 3.2; Conway and Sloane's algorithm).
    step = d + 1
    rem0 = np.floor(elevated / step + 0.5) * step
    diff = elevated - rem0
    order = np.argsort(-diff, axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(step)[None, :], axis=1)
    total = np.rint(rem0.sum(axis=1) / step).astype(np.int64)[:, None]
    rank = rank + total
    low, high = rank < 0, rank > d
    rank = np.where(low, rank + step, np.where(high, rank - step, rank))
    rem0 = np.where(low, rem0 + step, np.where(high, rem0 - step, rem0))
    # Barycentric coordinates of the point in its simplex.
    delta = (elevated - rem0) / step
    rows = np.arange(n)[:, None]
    bary = np.zeros((n, d + 2))
    np.add.at(bary, (rows, d - rank), delta)
    np.add.at(bary, (rows, d + 1 - rank), -delta)
    bary[:, 0] += 1.0 + bary[:, d + 1]
    bary = bary[:, : d + 1]
    # The d + 1 vertices: vertex k adds k to the coordinates of rank <= d - k and
    # k - (d + 1) to the others. A vertex is named by its first d coordinates.
    k = np.arange(step)[None, :, None]
    keys = rem0[:, None, :] + k - step * (rank[:, None, :] > d - k)
    keys = keys[:, :, :d].astype(np.int64).reshape(-1, d)
    codes, lo, radix = _encode(keys)
    unique, vertex = np.unique(codes, return_inverse=True)
    size = unique.size
    # Neighbours along direction j: every coordinate - 1 and coordinate j + d (and + 1,
    # j - d). The full d + 1 coordinates are needed for the last one (sum zero).
    points = _decode(unique, lo, radix, d)
    points = np.concatenate([points, -points.sum(axis=1, keepdims=True)], axis=1)
    neighbours = np.empty((step, 2, size), np.int64)
    for j in range(step):
        for side, sign in enumerate((-1, 1)):
            shifted = points + sign
            shifted[:, j] -= sign * step
            neighbours[j, side] = _lookup(unique, shifted[:, :d], lo, radix, size)
    # Row `size` is the missing neighbour: a row of zeros whose own neighbours are itself,
    # so that it stays zero through the blur.
    neighbours = np.concatenate([neighbours, np.full((step, 2, 1), size)], axis=2)
    return {
        "vertex": vertex.reshape(n, step).astype(np.int32),
        "weight": bary.astype(np.float32),
        "neighbours": neighbours.astype(np.int32),
        "size": int(size),
    }


def _encode(keys):
    """Mixed-radix int64 codes of integer rows (ranges must fit in 62 bits)."""
    lo = keys.min(axis=0) - 1  # room for the neighbours one step outside
    radix = keys.max(axis=0) - lo + 2
    if np.sum(np.log2(radix.astype(np.float64))) > 62:
        raise ValueError(
            "Expected features whose lattice coordinates fit in 62 bits. Received: a "
            f"feature range of {radix.tolist()} lattice steps; use larger standard deviations."
        )
    return _codes(keys, lo, radix), lo, radix


def _codes(keys, lo, radix):
    codes = np.zeros(keys.shape[0], np.int64)
    for i in range(keys.shape[1] - 1, -1, -1):
        codes = codes * radix[i] + (keys[:, i] - lo[i])
    return codes


def _decode(codes, lo, radix, d):
    out = np.empty((codes.size, d), np.int64)
    rest = codes.copy()
    for i in range(d):
        out[:, i] = rest % radix[i] + lo[i]
        rest //= radix[i]
    return out


def _lookup(unique, keys, lo, radix, missing):
    """Index of each key row in the sorted codes `unique`, or `missing`."""
    inside = np.all((keys > lo) & (keys < lo + radix), axis=1)
    codes = _codes(np.where(inside[:, None], keys, lo + 1), lo, radix)
    index = np.minimum(np.searchsorted(unique, codes), unique.size - 1)
    found = inside & (unique[index] == codes)
    return np.where(found, index, missing)


def lattice_tensors(lattice):
    """The arrays of `build_lattice` as backend tensors, one per simplex vertex / direction."""
    vertex, weight, neighbours = lattice["vertex"], lattice["weight"], lattice["neighbours"]
    return {
        "vertex": [ops.convert_to_tensor(vertex[:, k], "int32") for k in range(vertex.shape[1])],
        "weight": [ops.convert_to_tensor(weight[:, k : k + 1]) for k in range(weight.shape[1])],
        "neighbours": [
            ops.convert_to_tensor(neighbours[j].reshape(-1), "int32")
            for j in range(neighbours.shape[0])
        ],
        "size": lattice["size"],
    }


def filter_values(tensors, values):
    """Splat, blur and slice `values` `(N, C)` (float32) through the lattice.

    Splat and slice go one simplex vertex at a time: d + 1 passes over `(N, C)` arrays
    were faster on a CPU than one pass over an `(N, d + 1, C)` array (the slice of a VOC
    image's bilateral lattice: 74 against 228 ms on TensorFlow, 97 against 248 ms on JAX;
    benchmarks/README.md, "Dense CRF").
    """
    rows = tensors["size"] + 1  # the last row is the missing neighbour: zeros
    channels = values.shape[-1]
    grid = None
    for vertex, weight in zip(tensors["vertex"], tensors["weight"]):
        part = segment_sum_rows(values * weight, vertex, rows)
        grid = part if grid is None else grid + part
    for neighbours in tensors["neighbours"]:
        both = ops.reshape(ops.take(grid, neighbours, axis=0), (2, rows, channels))
        grid = grid + 0.5 * (both[0] + both[1])
    out = None
    for vertex, weight in zip(tensors["vertex"], tensors["weight"]):
        part = ops.take(grid, vertex, axis=0) * weight
        out = part if out is None else out + part
    return out
