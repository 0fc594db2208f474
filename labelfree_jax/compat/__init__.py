"""The original pytorch_fnet, fenced off: its transform-string parser (parse, never eval) and checkpoint converter.

May import core, transforms, models and inference.
"""
