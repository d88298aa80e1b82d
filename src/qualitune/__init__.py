"""qualitune: fine-tune vision-language models into image and video quality scorers."""

import os

# Threads that wait sleep instead of spinning. libgomp's default (spin, then sleep) assumes every
# thread has a core of its own; on a shared 2-core machine one busy neighbour descheduled torch's
# second thread and the first spun away its time slices at every barrier: the demo's train stage
# took 1,910 s beside another process instead of ~700 s, and a GEMM loop ran 5.5x slower than with
# PASSIVE (benchmarks/under_load.py measures both policies, idle and loaded). It must be set before
# torch loads libgomp, hence here: every stage, the CLI and the flows import qualitune first. A
# value the user sets wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
