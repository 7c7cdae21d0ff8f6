"""``boxcaseg.cli`` in which rank ``$KILL_RANK`` kills itself with SIGKILL (``kill -9``) as it
starts labeling its ``$KILL_AT``-th chunk of images; run under torchrun by
tests/test_label_torchrun.py to interrupt one rank mid-run."""

import os
import signal
import sys

from boxcaseg.cli import main
from boxcaseg.labeling.job import stream as labeler

if os.environ.get("RANK") == os.environ["KILL_RANK"]:
    real = labeler._label_chunk
    calls = [0]

    def dying(*args, **kwargs):
        calls[0] += 1
        if calls[0] == int(os.environ["KILL_AT"]):
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)

    labeler._label_chunk = dying

sys.exit(main(sys.argv[1:]))
