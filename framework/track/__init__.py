"""Where runs are kept: run folders and checkpoint references, MLflow wiring (one run per command, params, tags,
system metrics, overlays and checkpoints as artifacts) and the run tables and UI of ``segearth runs`` / ``ui``."""
