import json
import os
import socket
import subprocess
import sys

import pytest

from boxcaseg.runlock import (OutputLock, OutputLockedError, config_fingerprint,
                              file_fingerprint)


def test_second_lock_on_same_output_is_refused_and_names_the_holder(tmp_path):
    out = tmp_path / "labels.json"
    with OutputLock(out, "label"):
        with pytest.raises(OutputLockedError, match=rf"pid {os.getpid()}"):
            OutputLock(out, "label").acquire()
    # released: a new run may take it
    with OutputLock(out, "label") as lock:
        assert lock.path.exists()
    assert not (tmp_path / "labels.json.lock").exists()


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    out = tmp_path / "labels.json"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "labels.json.lock").write_text(json.dumps(
        {"pid": dead.pid, "host": socket.gethostname(), "command": "label"}))
    with OutputLock(out, "label"):
        holder = json.loads((tmp_path / "labels.json.lock").read_text())
        assert holder["pid"] == os.getpid()


def test_lock_of_another_host_is_never_broken(tmp_path):
    out = tmp_path / "labels.json"
    (tmp_path / "labels.json.lock").write_text(json.dumps(
        {"pid": 1, "host": "some-other-host", "command": "label"}))
    with pytest.raises(OutputLockedError, match="some-other-host"):
        OutputLock(out).acquire()


def test_fingerprints_follow_content_not_names(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text('{"x": 1}')
    b.write_text('{"x": 1}')
    assert file_fingerprint(a) == file_fingerprint(b)
    b.write_text('{"x": 2}')
    assert file_fingerprint(a) != file_fingerprint(b)
    assert config_fingerprint({"a": 1, "b": 2}) == config_fingerprint({"b": 2, "a": 1})
    assert config_fingerprint({"a": 1}) != config_fingerprint({"a": 1.5})
