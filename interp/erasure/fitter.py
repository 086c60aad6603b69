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

The random bases are NESTED across ranks: the columns of the Gaussian draw are drawn one after another, so the
rank-r basis is the first r columns of the rank-R basis for every R ≥ r (QR keeps the span of leading columns).
A rank sweep of the control then adds directions rather than drawing new ones, and the raw variance a raw-space
control removes, tr(UᵀSU) / tr(S), only grows with r. That is what `random_matching_variance` relies on: rank
alone does not match a control (a whitened random eraser of LEACE's rank may remove a tenth of LEACE's raw
variance), so it searches, by bisection over r, the smallest raw-space random eraser that removes at least a
given share of the raw variance.
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

    def random_matching_variance(self, target: float, *, seed: int, site: str) -> SiteEraser:
        """The raw-space random eraser of the smallest rank r (0..d) whose variance_removed is ≥ `target`, the
        variance-matched control. The bases are nested, so the removed variance grows with r: gallop r = 1, 2, 4,
        … until it is reached, then bisect below; every probe is measured exactly as the returned eraser is
        (variance_removed of the float32 factors), so the result removes ≥ target and rank r − 1 removes less.
        A target no rank reaches (above the full projection's, in rounding) gives rank d."""
        d, mean = self.leace_fitter.x_dim, self.leace_fitter.mean_x
        if target <= 0:
            return self._measured(_raw_eraser(torch.zeros(d, 0, dtype=torch.float64), mean, self.rows))
        low, high = 0, 1  # rank `low` removes less than target (probed, or 0)
        while True:
            basis = _random_basis(d, high, seed=seed, site=site)
            best = self._measured(_raw_eraser(basis, mean, self.rows))
            if best.variance_removed >= target or high == d:
                break
            low, high = high, min(2 * high, d)
        while high - low > 1:
            middle = (low + high) // 2
            probe = self._measured(_raw_eraser(basis[:, :middle], mean, self.rows))
            if probe.variance_removed >= target:
                high, best = middle, probe
            else:
                low = middle
        return best

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


def _random_basis(d: int, rank: int, *, seed: int, site: str) -> Tensor:
    """(d, rank) orthonormal, float64, from the seeded Gaussian draw of (seed, site). Column j is the j-th block
    of d draws (a (rank, d) draw, transposed), so the basis of rank r is the first r columns of any larger one."""
    rng = np.random.default_rng([seed, zlib.crc32(site.encode())])
    basis, _ = torch.linalg.qr(torch.from_numpy(rng.standard_normal((rank, d)).T.copy()))
    return basis


def _raw_eraser(basis: Tensor, mean: Tensor, rows: int) -> SiteEraser:
    """x − UUᵀ(x − μ): the orthogonal projection off the raw-space basis U (d, r)."""
    return SiteEraser(basis.float(), basis.mT.float(), mean.float(), rank=int(basis.shape[1]), rows=rows)


def _random_site_eraser(fitter: LeaceFitter, rank: int, *, seed: int, site: str, space: RandomSpace,
                        rows: int) -> SiteEraser:
    d = fitter.x_dim
    rank = min(rank, d)
    basis = _random_basis(d, rank, seed=seed, site=site)
    if rank == 0 or space == "raw":
        return _raw_eraser(basis, fitter.mean_x, rows)
    w, w_inv = _whitening(fitter)
    left, right = w_inv @ basis, basis.mT @ w
    return SiteEraser(left.float(), right.float(), fitter.mean_x.float(), rank=rank, rows=rows)
