"""The labeling job: input packing (``inputs``), the per-image stream (``stream``), part
files and resume (``parts``), merge with checks (``merge``), output formats (``writers``) and
the one-process / torchrun / job-array run (``run``)."""
