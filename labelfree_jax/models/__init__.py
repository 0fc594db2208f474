"""Network architectures (fnet U-Net 2D/3D and its convolution primitives), their typed config, and the model package format on disk.

May import core and transforms.
"""
