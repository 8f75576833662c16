"""The benchmark suite (issue 9): every stage's cost against what this machine can do, measured in one run.

``python -m benchmarks [--quick] [--out DIR]`` writes ``<host>-<date>.json`` and ``<host>-<date>.md`` (default
``benchmarks/results/``). Sections (each a module here): ``ceiling`` (matmul GFLOP/s, copy bandwidth),
``forward`` (full-size forward per stage, FLOPs and share of the ceiling), ``compression`` (what each compressor
buys), ``deformable`` (multi-scale deformable attention vs the direct reference), ``training`` (samples/s and peak
RSS vs image and batch size), ``questions`` (several questions on one encoded image), ``evaldata`` (evaluator and
data-loading throughput). ``--quick`` shrinks every model and size (the report says so) to finish in minutes.
"""
