"""Fitting one site's eraser in LeaceFitter's streaming shape: update(x, z) per batch, then a frozen SiteEraser.

LEACE (Belrose et al. 2023, "LEACE: Perfect linear concept erasure in closed form", §4) is concept-erasure's
`LeaceFitter`, kept at the library's defaults (affine, shrinkage, svd_tol 0.01, trace constraint) in float64.
The rank of an eraser is the number of concept directions it removes: the singular values of the whitened
cross-covariance W Σxz above svd_tol. When the trace constraint mixes the LEACE projection with the orthogonal
one, the library's factors may have up to 2r columns (d, before compaction); `trace_constrained` says so.

The random control removes r seeded random directions instead: its basis U (d × r) is orthonormal, from a
Gaussian matrix (seed, site), and it is removed as an orthogonal projection in the WHITENED space of the site's
rows (W = Σ^-1/2 from the same shrunk covariance LEACE uses): x ↦ x − W⁺UUᵀW(x − μ). LEACE is itself the
orthogonal projection, in that whitened space, onto the complement of the concept's r directions, so both
remove exactly r of the d whitened dimensions (share r/d): the only difference is which directions.
``space="raw"`` removes r random directions of the raw space instead (x − UUᵀ(x − μ)).
"""

from __future__ import annotations

import zlib
from dataclasses import replace
from typing import Literal

import numpy as np
import torch
from concept_erasure import LeaceFitter
from torch import Tensor

from interp.erasure.eraser import SiteEraser

__all__ = ["LEACE_SETTINGS", "RandomSpace", "SiteFitter"]

RandomSpace = Literal["whitened", "raw"]
LEACE_SETTINGS = {"method": "leace", "affine": True, "constrain_cov_trace": True, "shrinkage": True, "svd_tol": 0.01,
                  "dtype": "float64"}
"""The fitter's settings, written into every eraser file."""


class SiteFitter:
    """Streams one site's (rows, d) activations and their (rows, k) concept labels into LEACE's running moments.

    update(x, z) adds a batch to the running means and the unnormalised XᵀX, XᵀZ (float64): memory O(d² + dk)
    while fitting, whatever the number of rows. `leace()` and `random(...)` return the frozen SiteEraser, O(dk).
    """

    def __init__(self, d: int, k: int) -> None:
        self.leace_fitter = LeaceFitter(d, k, dtype=torch.float64, affine=LEACE_SETTINGS["affine"],
                                        constrain_cov_trace=LEACE_SETTINGS["constrain_cov_trace"],
                                        shrinkage=LEACE_SETTINGS["shrinkage"], svd_tol=LEACE_SETTINGS["svd_tol"])
        self.rows = 0

    def update(self, x: Tensor, z: Tensor) -> SiteFitter:
        """Add a batch: x (rows, d) and z (rows, k), both float64."""
        self.leace_fitter.update(x, z)
        self.rows += len(x)
        return self

    def leace(self) -> SiteEraser:
        """The LEACE eraser of the rows seen so far."""
        return self._measured(_site_eraser_from_fitter(self.leace_fitter, self.rows))

    def random(self, rank: int, *, seed: int, site: str, space: RandomSpace) -> SiteEraser:
        """The control: `rank` seeded random directions of the site (seed and site name pick them) removed in the
        whitened (or raw) space of the rows seen so far, about their mean."""
        return self._measured(_random_site_eraser(self.leace_fitter, rank, seed=seed, site=site, space=space,
                                                  rows=self.rows))

    def variance_removed(self, eraser: SiteEraser) -> float:
        """Share of the rows' raw centred variance the edit takes away: 1 − tr(A S Aᵀ) / tr(S), A = I − L R, S the
        unshrunk sample covariance. Computed through the rank-k factors: O(d²k), no d × d product of factors."""
        fitter = self.leace_fitter
        covariance = (fitter.sigma_xx_ + fitter.sigma_xx_.mH) / 2 / max(int(fitter.n) - 1, 1)
        total = covariance.trace()
        if eraser.proj_left.shape[1] == 0 or total <= 0:
            return 0.0
        left, right = eraser.proj_left.double(), eraser.proj_right.double()
        right_s = right @ covariance  # (k, d)
        cross = (right_s @ left).trace()  # tr(L R S)
        quadratic = ((left.mT @ left) * (right_s @ right.mT)).sum()  # tr(Lᵀ L R S Rᵀ)
        return float((2 * cross - quadratic) / total)

    def _measured(self, eraser: SiteEraser) -> SiteEraser:
        return replace(eraser, variance_removed=self.variance_removed(eraser))


def _whitening(fitter: LeaceFitter) -> tuple[Tensor, Tensor]:
    """W = Σ^-1/2 and W⁺ = Σ^1/2 of the fitter's (shrunk) covariance, with LeaceFitter's eigenvalue threshold."""
    sigma = fitter.sigma_xx
    eigenvalues, vectors = torch.linalg.eigh(sigma)
    mask = eigenvalues > (eigenvalues[-1] * sigma.shape[-1] * torch.finfo(eigenvalues.dtype).eps)
    eigenvalues = eigenvalues.clamp_min(0.0)
    w = vectors * torch.where(mask, eigenvalues.rsqrt(), 0.0) @ vectors.mH
    w_inv = vectors * torch.where(mask, eigenvalues.sqrt(), 0.0) @ vectors.mH
    return w, w_inv


def _leace_rank(fitter: LeaceFitter) -> int:
    """Concept directions LEACE removes: singular values of W Σxz above svd_tol (via Σzx Σxx⁻¹ Σxz)."""
    sigma_xz = fitter.sigma_xz
    solved = torch.linalg.lstsq(fitter.sigma_xx, sigma_xz).solution
    values = torch.linalg.eigvalsh(sigma_xz.mT @ solved).clamp_min(0).sqrt()
    return int((values > fitter.svd_tol).sum())


def _compact(left: Tensor, right: Tensor) -> tuple[Tensor, Tensor]:
    """Drop the zero columns of the factors (LeaceFitter keeps z_dim or d columns, some of them zero)."""
    weight = left.norm(dim=0) * right.norm(dim=1)
    keep = weight > (weight.max() * 1e-10 if weight.numel() else 0)
    keep &= weight > 0
    return left[:, keep], right[keep]


def _site_eraser_from_fitter(fitter: LeaceFitter, rows: int) -> SiteEraser:
    eraser = fitter.eraser
    d = fitter.x_dim
    mixed = fitter.z_dim < d and eraser.proj_left.shape[1] == d  # the trace constraint's SVD path
    left, right = _compact(eraser.proj_left, eraser.proj_right)
    rank = _leace_rank(fitter) if mixed else int(left.shape[1])
    return SiteEraser(left.float(), right.float(), eraser.bias.float(), rank=rank, rows=rows, trace_constrained=mixed)


def _random_site_eraser(fitter: LeaceFitter, rank: int, *, seed: int, site: str, space: RandomSpace,
                        rows: int) -> SiteEraser:
    d = fitter.x_dim
    rank = min(rank, d)
    rng = np.random.default_rng([seed, zlib.crc32(site.encode())])
    basis, _ = torch.linalg.qr(torch.from_numpy(rng.standard_normal((d, rank))))
    bias = fitter.mean_x.clone()
    if rank == 0:
        left = right = torch.zeros(d, 0, dtype=torch.float64)
        return SiteEraser(left.float(), right.mT.float(), bias.float(), rank=0, rows=rows)
    if space == "whitened":
        w, w_inv = _whitening(fitter)
        left, right = w_inv @ basis, basis.mT @ w
    else:
        left, right = basis, basis.mT
    return SiteEraser(left.float(), right.float(), bias.float(), rank=rank, rows=rows)
