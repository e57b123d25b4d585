"""Adam for the penalty path, without the optimiser object's per-call overhead.

``torch.optim.Adam(fused=True)`` spends about as long in Python (parameter groups,
state look-ups, the step counters) as in its kernel on a small network: 57 us a
step against 21 us for the kernel alone on the digits MLP's 26k weights, 280 us
against 189 us on LeNet-300-100's 267k (CPU, one thread). The path steps one fixed
list of tensors, so :class:`Adam` holds its state in lists and calls the same
fused kernel directly; the update is torch.optim.Adam's, number for number
(``tests/test_engine.py`` checks it against torch.optim.Adam). Where there is no
fused kernel (other devices or dtypes) it runs ``torch.optim.Adam`` itself.
"""

from __future__ import annotations

import torch

__all__ = ["Adam"]

_FUSED_DEVICES = ("cpu", "cuda")
_FUSED_DTYPES = (torch.float32, torch.float64)


class Adam:
    """Adam on ``params`` (updated in place), with gradients passed to each step.

    Args:
        params: the tensors to update (they need no ``requires_grad``; views of one
            flat vector are fine).
        lr, betas, eps: as torch.optim.Adam (no weight decay, no amsgrad).
        fused: False runs torch.optim.Adam itself; None (default) calls the fused
            kernel where there is one.
    """

    def __init__(
        self,
        params: list[torch.Tensor],
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        fused: bool | None = None,
    ):
        self.params = list(params)
        self.lr, self.betas, self.eps = lr, betas, eps
        first = self.params[0]
        self.fused = (
            fused is not False
            and hasattr(torch, "_fused_adam_")
            and first.device.type in _FUSED_DEVICES
            and all(p.dtype in _FUSED_DTYPES and p.device == first.device for p in self.params)
        )
        if self.fused:
            self.exp_avg = [torch.zeros_like(p) for p in self.params]
            self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]
            # the kernel reads one float32 step counter per tensor, as torch.optim.Adam keeps them
            self.steps = [torch.zeros((), dtype=torch.float32, device=p.device) for p in self.params]
        else:
            self._leaves = [p.detach().requires_grad_(True) for p in self.params]
            self._optimizer = torch.optim.Adam(self._leaves, lr=lr, betas=betas, eps=eps)

    def set_lr(self, lr: float) -> None:
        """The learning rate of the next steps (a schedule); the moments are kept."""
        self.lr = lr
        if not self.fused:
            for group in self._optimizer.param_groups:
                group["lr"] = lr

    def step(self, grads: list[torch.Tensor]) -> None:
        """One Adam update of the parameters with these gradients (one per parameter)."""
        if self.fused:
            torch._foreach_add_(self.steps, 1)
            torch._fused_adam_(
                self.params,
                grads,
                self.exp_avg,
                self.exp_avg_sq,
                [],
                self.steps,
                lr=self.lr,
                beta1=self.betas[0],
                beta2=self.betas[1],
                weight_decay=0.0,
                eps=self.eps,
                amsgrad=False,
                maximize=False,
            )
            return
        for leaf, grad in zip(self._leaves, grads):
            leaf.grad = grad
        self._optimizer.step()
