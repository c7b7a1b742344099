"""Pixel preprocessing: per-channel standardisation and the two ZCA whitening variants.

Everything here is fitted once on the host, on the training images, with numpy (float64 for the
statistics and the eigendecomposition), and stored as frozen dataclasses of float32 arrays. The
``apply`` / ``transform`` / ``inverse`` methods work on numpy arrays and on jax arrays alike (they only
use ``reshape``, ``@`` and elementwise operations, plus a norm for the KIP variant), so they can be
called inside jitted code or on distilled images for display.

ZCA variants (docs/data.md):

``"zca"`` (KIP / RaT-BPTT / FRePo): each image has its own mean removed and is scaled to unit L2 norm;
    then ``Σ = XᵀX / n`` over the training images, ``Σ = V diag(e) Vᵀ`` and
    ``W = V diag((e + reg·mean(e))^-½) Vᵀ`` with ``reg = 0.1`` by default. ``transform(x)`` applies the
    same per-image normalisation and then ``W``. The per-image mean and norm are not stored, so the
    inverse cannot be exact: ``inverse_transform`` undoes the whitening only, and ``Preprocessing.inverse``
    then min-max rescales every image to [0, 1] for display.

``"zca-mtt"`` (Kornia's ``ZCAWhitening`` as used by MTT / DATM): ``X - μ`` with the per-pixel training
    mean ``μ``, unbiased covariance ``Σ = (X-μ)ᵀ(X-μ) / (n-1) = U diag(s) Uᵀ``,
    ``W = U diag((s + reg)^-½) Uᵀ`` with ``reg = 0.1`` by default (an absolute epsilon, not relative).
    Fully invertible: ``inverse_transform(transform(x)) == x`` up to float32 rounding.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from jaxdd.errors import JaxddError, require

NORMALIZATIONS = ("none", "standardize", "zca", "zca-mtt", "standardize-cifar", "standardize-imagenet")
#: fixed per-channel (mean, std) of the MTT authors' non-ZCA inputs (utils.get_dataset): CIFAR-10 and CIFAR-100
#: both take the CIFAR-10 constants; Tiny-ImageNet and the ImageNet subsets the ImageNet ones
FIXED_STANDARDIZE = {"standardize-cifar": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
                     "standardize-imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))}
ZCA_VARIANTS = ("zca", "zca-mtt")
DEFAULT_ZCA_REGULARIZATION = 0.1


def _xp(x):
    """numpy for numpy inputs, jax.numpy for jax arrays (imported lazily)."""
    if isinstance(x, np.ndarray) or np.isscalar(x):
        return np
    import jax.numpy as jnp

    return jnp


def _per_image_normalize(flat, eps: float = 1e-12):
    """Remove each row's mean and scale each row to unit L2 norm (all-constant rows become zeros)."""
    xp = _xp(flat)
    flat = flat - flat.mean(axis=1, keepdims=True)
    norm = xp.sqrt((flat * flat).sum(axis=1, keepdims=True))
    return flat / xp.maximum(norm, eps)


@dataclasses.dataclass(frozen=True, eq=False)
class Zca:
    """A fitted ZCA whitening. ``transform`` maps [N, H, W, C] images to whitened images of the same shape.

    Fields: ``variant`` ("zca" or "zca-mtt"), ``regularization``, ``mean`` (per-pixel mean, [D]; zeros
    for "zca" whose centring is per image), ``whitening`` ``W`` and ``unwhitening`` ``W⁻¹`` ([D, D],
    symmetric), ``eigenvalues`` of the fitted covariance (descending, [D]). Compared and hashed by
    identity (eq=False), since its fields are arrays.
    """

    variant: str
    regularization: float
    mean: np.ndarray
    whitening: np.ndarray
    unwhitening: np.ndarray
    eigenvalues: np.ndarray

    @property
    def dim(self) -> int:
        return int(self.whitening.shape[0])

    def _flat(self, x):
        require(
            int(np.prod(x.shape[1:])) == self.dim,
            f"ZCA was fitted on images with {self.dim} values each, got shape {tuple(x.shape)}: "
            "transform images of the fitted shape",
        )
        return x.reshape(x.shape[0], -1)

    def transform(self, x):
        flat = self._flat(x)
        if self.variant == "zca":
            flat = _per_image_normalize(flat)
        else:
            flat = flat - self.mean
        return (flat @ self.whitening).reshape(x.shape)

    def inverse_transform(self, x):
        """Undo the whitening (exact for "zca-mtt"; for "zca" the per-image mean and norm stay removed)."""
        flat = self._flat(x) @ self.unwhitening
        if self.variant == "zca-mtt":
            flat = flat + self.mean
        return flat.reshape(x.shape)

    def whitened_eigenvalues(self) -> np.ndarray:
        """Eigenvalues of the covariance of the whitened training data: e / (e + effective reg)."""
        e = self.eigenvalues.astype(np.float64)
        if self.variant == "zca":
            return e / (e + self.regularization * e.mean())
        return e / (e + self.regularization)


def fit_zca(x, variant: str = "zca", regularization: float | None = None) -> Zca:
    """Fit a ZCA whitening on images ``x`` [N, H, W, C] (see the module doc for the two variants)."""
    require(variant in ZCA_VARIANTS, f"unknown ZCA variant {variant!r}: use one of {', '.join(ZCA_VARIANTS)}")
    reg = DEFAULT_ZCA_REGULARIZATION if regularization is None else float(regularization)
    require(np.isfinite(reg) and reg >= 0, f"zca_regularization must be a number >= 0, got {regularization!r}")
    x = np.asarray(x)
    require(x.ndim >= 2 and x.shape[0] >= 2, f"ZCA needs at least 2 images, got shape {x.shape}")
    flat = x.reshape(x.shape[0], -1)
    n, d = flat.shape
    chunk = 4096  # accumulate XᵀX in float64 a block of rows at a time (bounded memory)
    if variant == "zca":
        mean = np.zeros(d, np.float64)
    else:
        mean = flat.mean(axis=0, dtype=np.float64)
    cov = np.zeros((d, d), np.float64)
    for i in range(0, n, chunk):
        block = flat[i : i + chunk].astype(np.float64)
        block = _per_image_normalize(block) if variant == "zca" else block - mean
        cov += block.T @ block
    cov /= n if variant == "zca" else (n - 1)
    e, v = np.linalg.eigh(cov)
    e = np.clip(e, 0.0, None)[::-1]
    v = v[:, ::-1]
    shift = reg * e.mean() if variant == "zca" else reg
    require(
        shift > 0 or e.min() > 0,
        "the image covariance is singular: use a zca_regularization > 0",
    )
    whitening = (v * (e + shift) ** -0.5) @ v.T
    unwhitening = (v * (e + shift) ** 0.5) @ v.T
    return Zca(
        variant=variant,
        regularization=reg,
        mean=mean.astype(np.float32),
        whitening=whitening.astype(np.float32),
        unwhitening=unwhitening.astype(np.float32),
        eigenvalues=e.astype(np.float32),
    )


@dataclasses.dataclass(frozen=True, eq=False)
class Preprocessing:
    """The preprocessing a Dataset's pixels went through, fitted on its training split.

    ``name`` is one of NORMALIZATIONS. ``mean``/``std`` are per-channel [C] arrays for "standardize";
    ``zca`` is the fitted ``Zca`` for the ZCA variants. ``apply`` maps [0, 1] pixels to model inputs;
    ``inverse`` maps model inputs back to [0, 1] display pixels (clipped). For "zca" (KIP) the inverse
    undoes the whitening, then min-max rescales each image to [0, 1], because the per-image mean and
    norm removed before whitening are not recoverable; for the others it is exact up to the clipping.
    """

    name: str = "none"
    mean: np.ndarray | None = None
    std: np.ndarray | None = None
    zca: Zca | None = None

    def apply(self, x):
        if self.name.startswith("standardize"):
            return (x - self.mean) / self.std
        if self.zca is not None:
            return self.zca.transform(x)
        return x

    def inverse(self, x):
        xp = _xp(x)
        if self.name.startswith("standardize"):
            x = x * self.std + self.mean
        elif self.name == "zca-mtt":
            x = self.zca.inverse_transform(x)
        elif self.name == "zca":
            x = self.zca.inverse_transform(x)
            axes = tuple(range(1, x.ndim))
            lo = x.min(axis=axes, keepdims=True)
            hi = x.max(axis=axes, keepdims=True)
            x = (x - lo) / xp.maximum(hi - lo, 1e-12)
        return xp.clip(x, 0.0, 1.0)

    def __repr__(self) -> str:
        return f"Preprocessing(name={self.name!r})"


def channel_mean_std(x, chunk: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and (population) std of [N, ..., C] images, accumulated in float64.

    numpy's own float32 ``var`` over ~10^8 values is off in the second digit; this sums per-pixel
    float64 totals over blocks of images (fast: the reduction runs along the long pixel axis).
    """
    x = np.asarray(x)
    require(x.ndim >= 2 and x.shape[0] > 0, f"cannot standardize images of shape {x.shape}")
    c = x.shape[-1]
    flat = x.reshape(x.shape[0], -1)
    s = np.zeros(flat.shape[1], np.float64)
    s2 = np.zeros(flat.shape[1], np.float64)
    for i in range(0, flat.shape[0], chunk):
        block = flat[i : i + chunk].astype(np.float64)
        s += block.sum(axis=0)
        s2 += (block * block).sum(axis=0)
    count = flat.size / c
    mean = s.reshape(-1, c).sum(axis=0) / count
    var = s2.reshape(-1, c).sum(axis=0) / count - mean**2
    return mean, np.sqrt(np.clip(var, 0.0, None))


def fit_preprocessing(
    x_train, normalize: str = "standardize", zca_regularization: float | None = None
) -> Preprocessing:
    """Fit the named preprocessing on training images in [0, 1] ([N, H, W, C])."""
    if not isinstance(normalize, str) or normalize not in NORMALIZATIONS:
        raise JaxddError(f"unknown normalize {normalize!r}: use one of {', '.join(NORMALIZATIONS)}")
    require(
        zca_regularization is None or normalize in ZCA_VARIANTS,
        f"zca_regularization only applies to normalize='zca' or 'zca-mtt', not {normalize!r}",
    )
    x_train = np.asarray(x_train)
    if normalize == "none":
        return Preprocessing("none")
    if normalize == "standardize":
        mean, std = channel_mean_std(x_train)
        std = np.where(std > 1e-8, std, 1.0)  # constant channels are only centred
        return Preprocessing("standardize", mean=mean.astype(np.float32), std=std.astype(np.float32))
    if normalize in FIXED_STANDARDIZE:
        mean, std = (np.asarray(v, np.float32) for v in FIXED_STANDARDIZE[normalize])
        require(x_train.shape[-1] == 3, f"--normalize {normalize} is for RGB images, not {x_train.shape[-1]} channels")
        return Preprocessing(normalize, mean=mean, std=std)
    return Preprocessing(normalize, zca=fit_zca(x_train, variant=normalize, regularization=zca_regularization))


def apply_preprocessing(pre: Preprocessing, *arrays: Any, inplace: bool = False, chunk: int = 4096) -> tuple:
    """``pre.apply`` on each array (None passes through) as float32 numpy, a block of images at a time.

    With ``inplace=True`` float32 numpy inputs are overwritten where the transform allows it (saves
    allocating and page-faulting a second copy of a large data set).
    """
    out = []
    for a in arrays:
        if a is None:
            out.append(None)
            continue
        a = np.asarray(a)
        own = inplace and a.dtype == np.float32 and a.flags.writeable and a.flags.c_contiguous
        if pre.name == "none":
            out.append(a if own else a.astype(np.float32))
            continue
        if pre.name == "standardize" and own:
            a -= pre.mean
            a /= pre.std
            out.append(a)
            continue
        res = a if own else np.empty(a.shape, np.float32)
        for i in range(0, a.shape[0], chunk):
            res[i : i + chunk] = pre.apply(a[i : i + chunk])
        out.append(res)
    return tuple(out)
