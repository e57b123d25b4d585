"""Pictures of weight space: trajectory PCA, planes and slices of the loss landscape."""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["TrajectoryPCA", "trajectory_pca"]


@dataclass(frozen=True)
class TrajectoryPCA:
    """A trajectory projected on its top principal components.

    Attributes:
        coords: (S, k) coordinates of each snapshot.
        explained: (k,) fraction of the trajectory's variance along each component.
        components: (k, P) unit directions in weight space.
        mean: (P,) the mean snapshot (the origin of the plot).
    """

    coords: torch.Tensor
    explained: torch.Tensor
    components: torch.Tensor
    mean: torch.Tensor

    def project(self, w: torch.Tensor) -> torch.Tensor:
        """Coordinates of other points (..., P) -> (..., k) in the same frame."""
        return (w - self.mean) @ self.components.T


def trajectory_pca(snapshots: torch.Tensor, k: int = 2) -> TrajectoryPCA:
    """PCA of stacked weight snapshots (S, P), via the SVD of the centred stack.

    With S snapshots there are at most S - 1 non-zero components; missing ones are
    returned as zeros so the caller can always draw k axes.
    """
    x = snapshots.double()
    mean = x.mean(0)
    centred = x - mean
    # S << P: the SVD of the (S, P) matrix costs O(S^2 P)
    _, sing, vh = torch.linalg.svd(centred, full_matrices=False)
    total = (sing**2).sum().clamp_min(1e-300)
    explained = torch.zeros(k, dtype=torch.float64)
    components = torch.zeros(k, x.shape[1], dtype=torch.float64)
    n = min(k, vh.shape[0])
    explained[:n] = (sing[:n] ** 2) / total
    components[:n] = vh[:n]
    coords = centred @ components.T
    return TrajectoryPCA(coords.float(), explained.float(), components.float(), mean.float())
