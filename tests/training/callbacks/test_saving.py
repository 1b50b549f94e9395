"""Atomic saves (kseg.training.callbacks.saving)."""

import json
import os
import re

import pytest

from kseg.training import (
    remove_stale_temporaries,
    save_atomically,
)


def test_save_atomically(tmp_path):
    path = tmp_path / "state.json"
    save_atomically(path, lambda p: open(p, "w").write('{"a": 1}'))
    assert json.loads(path.read_text()) == {"a": 1}

    def half_written(p):
        with open(p, "w") as f:
            f.write('{"a": ')
        raise KeyboardInterrupt  # a signal in the middle of the write

    with pytest.raises(KeyboardInterrupt):
        save_atomically(path, half_written)
    assert json.loads(path.read_text()) == {"a": 1}
    assert sorted(os.listdir(tmp_path)) == ["state.json"]
    # The temporary name keeps Keras' ending and lies in the same folder.
    seen = []
    save_atomically(tmp_path / "m.weights.h5", lambda p: (seen.append(p), open(p, "w").close()))
    folder, name = os.path.split(seen[0])
    assert folder == str(tmp_path)
    assert re.fullmatch(rf"\.m\.tmp-{os.getpid()}-[0-9a-f]{{8}}\.weights\.h5", name)
    # What a killed save leaves is found and removed.
    stale = tmp_path / ".m.tmp-99999.weights.h5"
    stale.write_bytes(b"x")
    assert remove_stale_temporaries(tmp_path / "m.weights.h5") == [str(stale)]
    assert sorted(os.listdir(tmp_path)) == ["m.weights.h5", "state.json"]
    with pytest.raises(RuntimeError, match="wrote nothing"):
        save_atomically(tmp_path / "n.json", lambda p: None)
    with pytest.raises(FileNotFoundError, match="no folder"):
        save_atomically(tmp_path / "missing" / "n.json", lambda p: open(p, "w").close())
