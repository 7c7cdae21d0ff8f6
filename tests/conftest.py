import os

# Tests are tiny: one thread each keeps them fast and deterministic on a 2-core machine.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)
