"""Optional CPU accelerator: oneDNN convolutions through JAX's FFI (:mod:`.conv`, :mod:`.build`).

``conv3d.cc`` (XLA FFI handlers for oneDNN's forward, backward-data and backward-weights
convolution primitives) is compiled with the machine's C++ compiler against the oneDNN v3
package (``pip install 'labelfree-jax[onednn]'``) on the first convolution that uses it, then
cached (``~/.cache/labelfree-jax/onednn``). Without oneDNN or a compiler everything falls back
to XLA's own convolutions (:mod:`labelfree_jax.models.ops`). Importing this package does
nothing else: no build, no registration.
"""

from labelfree_jax.models.onednn.conv import (
    ONEDNN_ENV,
    available,
    conv3d_onednn,
    conv_same_onednn,
    enabled,
    info,
    kernel_grad_onednn,
    supports,
    unavailable_reason,
    use_onednn,
)

__all__ = [
    "ONEDNN_ENV",
    "available",
    "conv3d_onednn",
    "conv_same_onednn",
    "enabled",
    "info",
    "kernel_grad_onednn",
    "supports",
    "unavailable_reason",
    "use_onednn",
]
