"""``scot bench``: stage-by-stage timings, the floors they compare with, memory.

One module per measurement:

* :mod:`~scot.bench.synthetic`: the matching stages (cost, Sinkhorn, RHM, transfer) on random
  hyperpixels in a preset's layout, against the dense matmul of the same problem and
  against a plain copy of the N x M matrix (the memory floor of any pass over it);
* :mod:`~scot.bench.pairs`: every stage on real image pairs, for each correlation path
  (factorized, dense, and the one the cost estimate chose) with the reason for the choice;
* :mod:`~scot.bench.features`: each backbone's network pass per input scale (time, FLOPs, the
  rate achieved) and the description of an image per CAM setting, against the machine's
  roofs: a large dense matmul (compute) and a large copy (memory);
* :mod:`~scot.bench.memory`: resident memory sampled along a long synthetic evaluation, to
  show that it stays flat however many pairs are scored.

:mod:`~scot.bench.measure` holds what they share: timing, memory high-water marks, the
median-and-spread statistic, the matrix traffic of each stage and the copy floor.

Every figure is a median over repeats with its spread (min-max), measured in-process with
``time.perf_counter`` after warm-up, each timed call starting and ending after the queued
work of the device benchmarked has finished.  Peak memory is, on the CPU, the process's
resident high-water mark, reset before each measurement through ``/proc/self/clear_refs``;
on CUDA, the most GPU memory PyTorch allocated (``torch.cuda.max_memory_allocated``,
reset before each measurement).
"""
