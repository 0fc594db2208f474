"""The offline quick start: synthetic phantom cells and the train-package-predict-report run.

May import every library layer (not the CLI).
"""
