"""The original pytorch_fnet, fenced off: its transform strings (:mod:`.fnet_transforms`: parse, never eval) and its checkpoints (:mod:`.convert`).

May import core, transforms, models and inference.
"""
