"""Ray Tune studies of a training spec: search space, the Tuner, and the study's MLflow runs.

    isrn tune tune-smoke                         # a study of the spec's tune: section
    isrn tune tune-smoke --resume tune-smoke-20250101-120000

Nothing here is imported by `jobs.spec` except the typed `TuneConfig` (jobs/tune/config.py).
"""
