"""Atomic saves: a temporary file in the target's folder, flushed, then renamed into place.

A process killed during a save leaves the previous file whole; a full device
ends in one `DiskFullError` that names the file and says the previous one is
intact (h5py, Keras' weights writer, otherwise crashed the process at exit).
"""

import errno
import gc
import glob
import json
import os
import secrets
import shutil
import sys

import numpy as np

#: Endings kept at the end of a temporary name: Keras chooses the format of a save by them.
_SUFFIXES = (".weights.h5", ".weights.json", ".keras", ".h5", ".json")


def _split_suffix(name):
    for suffix in _SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)], suffix
    stem, suffix = os.path.splitext(name)
    return stem, suffix


def _temporary_path(path, tag="*"):
    """`<folder>/.<stem>.tmp-<tag><suffix>`: same folder (so `os.replace` is a rename), same ending."""
    folder, name = os.path.split(path)
    stem, suffix = _split_suffix(name)
    return os.path.join(folder, f".{stem}.tmp-{tag}{suffix}")


def _fsync(path):
    """Flushes a file (or a folder's entries) to the disk; a no-op where the OS refuses."""
    try:
        fd = os.open(path or ".", os.O_RDONLY)
    except OSError:  # a folder on Windows
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_stale_temporaries(path):
    """Deletes the temporary files that `save_atomically(path, ...)` calls killed mid-save left.

    Args:
        path: the target path given to `save_atomically`.

    Returns:
        The paths removed.
    """
    removed = []
    for stale in glob.glob(_temporary_path(os.fspath(path))):
        if os.path.isfile(stale):
            os.remove(stale)
            removed.append(stale)
    return removed


def save_atomically(path, save, size=None):
    """Writes a file through a temporary name in its folder, then moves it into place.

    `save(temporary_path)` writes the file (e.g. `model.save`, `model.save_weights`
    or a JSON dump) to `<folder>/.<stem>.tmp-<pid>-<random><suffix>`, which keeps the
    ending (`.keras`, `.weights.h5`, `.json`, ...) that Keras chooses the format
    by; the file is flushed to the disk and renamed to `path` with `os.replace`,
    which replaces the old file in one step (POSIX `rename`). A process killed
    during the save leaves the previous `path` whole and usable; an exception in
    `save` also deletes the temporary file and propagates.

    A full device raises `DiskFullError` (an `OSError` with `errno.ENOSPC` that
    names the file, its folder and whether the previous file is intact), before
    anything is written when `size` says the file cannot fit: h5py, which
    writes Keras' `.weights.h5` and `.keras` files, does not recover from a
    write that fails for space (it crashed the process at exit).

    Args:
        path: the final path (a local file; its folder must exist).
        save: a function of one argument, the temporary path, that writes the file.
        size: the bytes the file will take at least (`saved_size(model)`), checked
            against the device's free space first; None skips the check.

    Returns:
        `path`.
    """
    path = os.fspath(path)
    folder = os.path.dirname(path)
    if folder and not os.path.isdir(folder):
        raise FileNotFoundError(
            f"Expected the folder of `path` to exist. Received: path={path!r} (no folder {folder!r})"
        )
    # The process id and a random part: processes on several hosts may share the folder.
    temporary = _temporary_path(path, f"{os.getpid()}-{secrets.token_hex(4)}")
    if size is not None and shutil.disk_usage(folder or ".").free < size:
        raise DiskFullError(path, os.path.isfile(path), size, shutil.disk_usage(folder or ".").free)
    try:
        _save_reporting_disk_full(save, temporary, path)
        if not os.path.isfile(temporary):
            raise RuntimeError(
                f"Expected `save` to write the file it was given. Received: save={save!r}, "
                f"which wrote nothing at {temporary!r}"
            )
        _fsync(temporary)
        os.replace(temporary, path)
    except BaseException:
        if os.path.isfile(temporary):
            os.remove(temporary)
        raise
    _fsync(folder)
    return path


class DiskFullError(OSError):
    """`save_atomically` found no space left on the device; the previous file is intact.

    An `OSError` with `errno.ENOSPC`, whose message names the file, its folder and
    whether an earlier version of it is still there.
    """

    def __init__(self, path, kept, needed=None, free=None):
        folder = os.path.dirname(os.path.abspath(path))
        room = (
            ""
            if needed is None
            else f" (it needs about {needed / 2**20:.1f} MiB, {free / 2**20:.1f} MiB are free)"
        )
        state = (
            f"the previous {os.path.basename(path)} is intact"
            if kept
            else f"no earlier {os.path.basename(path)} existed"
        )
        super().__init__(
            errno.ENOSPC,
            f"No space left on device: could not write {path}{room} in the folder {folder}; "
            f"nothing was left half-written and {state}. Free space on that device or write "
            "elsewhere.",
        )
        self.path = path


def saved_size(model):
    """A lower bound on the bytes of `model`'s `save_weights` or `save` file.

    Both hold the weights and, once the model is compiled, the optimizer's state.
    The bound counts their raw bytes and 1 KiB per variable of HDF5 metadata (about
    1.4 KiB measured on a `.weights.h5` of Adam's state), so that a save refused for
    space would not have fitted.
    """
    variables = list(model.weights)
    if getattr(model, "optimizer", None) is not None:
        variables += list(model.optimizer.variables)
    data = sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in variables)
    return data + 1024 * len(variables)


def _save_reporting_disk_full(save, temporary, path):
    """`save(temporary)`, where a full device ends in one `DiskFullError` and nothing else.

    h5py (Keras' `.weights.h5` and `.keras` writer) that runs out of space keeps
    its file open and flushes it again each time one of its objects is freed,
    failing and printing "Exception ignored" each time; a file still open at
    interpreter exit crashed the process (exit 139). On a full device, the
    temporary file is emptied (its blocks freed, so h5py's last flush finds room),
    h5py's objects are freed now, and their reports of the failure are dropped.
    Other reports made during the save are passed on.
    """
    hook = sys.unraisablehook
    reports = []
    sys.unraisablehook = reports.append
    disk_full = False
    try:
        save(temporary)
    except OSError as error:
        if not _is_disk_full(error):
            raise
        disk_full = True
    finally:
        try:
            if disk_full:
                if os.path.isfile(temporary):
                    os.truncate(temporary, 0)
                gc.collect()
                reports = [r for r in reports if not _is_disk_full(r.exc_value)]
        finally:
            sys.unraisablehook = hook
            for report in reports:
                hook(report)
    if disk_full:
        raise DiskFullError(path, os.path.isfile(path))


def _is_disk_full(error):
    """An error for a full device, also when a library (h5py) drops its errno."""
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return True
    return "No space left on device" in str(error) or "errno = 28," in str(error)


def write_json(path, value):
    with open(path, "w") as f:
        json.dump(value, f, indent=2)


def read_json(path):
    with open(path) as f:
        return json.load(f)
