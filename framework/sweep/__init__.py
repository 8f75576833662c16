"""Optuna sweeps over experiment configs: the sweep YAML, the shared storage and its locks, the controller that runs
one ``segearth fit`` process per trial, the job side's pruning callbacks, and the report with its MLflow runs."""
