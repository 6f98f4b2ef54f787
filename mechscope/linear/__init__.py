"""The linear interpreter (LinearScope; Navarrete Michelini et al. 2019).

For one input ``x0`` every non-linearity's decision is frozen and the network becomes an exact
affine map ``y = A x + c`` with ``A x0 + c = f(x0)``::

    from mechscope.linear import linearize
    amap = linearize(model, x0)          # FrozenAffineMap
    amap.apply(v); amap.apply_T(u); amap.bias; amap.row(3); amap.column(10); amap.svd(8)

Modules: ``freeze`` (the freezing mechanism: a package, see its docstring; frozen gates and norm
scales in products are its ``ops_multipliers``), ``affine_map`` (the ``AffineMap`` type), ``linearize``
(entry points), ``analyses`` (pixel votes, bias share, basis images), ``demos`` (in-project image
models), ``figures`` (PNGs), ``bench`` (speed vs jacrev), ``cli``.
"""

from mechscope.linear.affine_map import (AffineMap, DenseAffineMap, FrozenAffineMap, LowRankAffineMap,
                                         SVDResult, dense_svd, krylov_svd)
from mechscope.linear.errors import LinearizationError, ReplayError, UnsupportedLayerError
from mechscope.linear.freeze import FrozenNetwork
from mechscope.linear.linearize import linearize, linearize_transformer, logit_diff, verify_map

__all__ = ["AffineMap", "DenseAffineMap", "FrozenAffineMap", "LowRankAffineMap", "SVDResult", "dense_svd",
           "krylov_svd", "LinearizationError", "ReplayError", "UnsupportedLayerError", "FrozenNetwork",
           "linearize", "linearize_transformer", "logit_diff", "verify_map"]
