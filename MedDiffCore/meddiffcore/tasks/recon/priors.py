"""A 2D prior applied to a 3D volume: the volume's slices along a plane are a batch of 2D images.

The primary prior sees axial slices (batch = number of z slices) and the auxiliary
coronal slices (batch = number of y rows) of the same volume, by default. The batch
goes through the network in calls of at most ``pixels`` padded pixels (and at most
``chunk`` slices where a job caps it), so a call's activations stay within about
:data:`CALL_BYTES` whatever the slice size: 4 slices of 512^2 per call for the bundled
priors, 64 of 64^2. Each slice is padded to the network's size multiple (replication)
and cropped back; the network treats every slice on its own, so the results do not
depend on how the batch is split.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ...diffusion import predict
from .planes import from_slices, to_slices


CALL_BYTES = 1 << 30
"""The activation memory one network call may take (CPU inference, no gradient): 1 GiB."""

BYTES_PER_PIXEL_PER_CHANNEL = 52.0
"""Inference memory per pixel of one 2D slice, per channel of the network's first level: measured 776-853 bytes
per pixel (peak RSS over the process's before the call, 4-16 slices of 512^2, float32) for the bundled 16-channel
UNet priors, i.e. 49-53 per channel; 52 keeps a 4-slice 512^2 call at ~0.85 GB."""


def call_pixels(network: Any = None, budget: int = CALL_BYTES) -> int:
    """Padded pixels per network call so that one call needs about ``budget`` bytes, for a prior of the
    architecture ``network`` (a UNet or NCSN++ config: its first level's width; unknown: 16 channels)."""
    width = 16
    if network is not None:
        mult = getattr(network, "channel_mult", None) or (1,)
        width = int(getattr(network, "base_channels", 16)) * int(mult[0])
    return max(1, int(budget // (BYTES_PER_PIXEL_PER_CHANNEL * max(width, 1))))


DEFAULT_PIXELS = call_pixels()

GRAD_MEMORY_FACTOR = 4.0
"""How much more memory a network call with its graph kept and back-propagated takes than one without: measured
3.9x (3600 vs 921 bytes per pixel, peak RSS of one call of 2 slices of 512^2 with the bundled CT prior), so a
gradient call takes a quarter of the pixels."""


@dataclass
class VolumePrior:
    """``denoiser``: a sigma-space 2D denoiser; ``plane``: which slices it was trained on; ``chunk``: at most this
    many slices per network call (None: no cap beyond ``pixels``); ``pixels``: at most this many padded pixels per
    call (at least one slice per call)."""

    denoiser: Callable
    plane: str
    size_multiple: int = 1
    chunk: int | None = None
    pixels: int = DEFAULT_PIXELS
    evaluations: int = field(default=0)
    """Volume passes so far (one pass = every slice once)."""

    def padded_size(self, h: int, w: int) -> tuple[int, int]:
        m = self.size_multiple
        return h + (-h) % m, w + (-w) % m

    def slices_per_call(self, h: int, w: int, grad: bool = False) -> int:
        """How many (h, w) slices one network call takes (``grad``: a call that back-propagates, see
        :data:`GRAD_MEMORY_FACTOR`)."""
        ph, pw = self.padded_size(h, w)
        pixels = int(self.pixels / GRAD_MEMORY_FACTOR) if grad else self.pixels
        n = max(1, pixels // (ph * pw))
        return min(n, self.chunk) if self.chunk else n

    def _pad(self, s: Tensor) -> tuple[Tensor, tuple[int, int]]:
        h, w = s.shape[-2:]
        m = self.size_multiple
        ph, pw = (-h) % m, (-w) % m
        if ph or pw:
            s = F.pad(s, (0, pw, 0, ph), mode="replicate")
        return s, (h, w)

    def call(self, slices: Tensor, sigma: float) -> tuple[Tensor, Tensor]:
        """ONE network call on (n, H, W) slices -> (x0_hat, eps_hat) slices (under the caller's grad mode)."""
        part, (h, w) = self._pad(slices[:, None])
        sig = torch.full((part.shape[0],), float(sigma), device=slices.device, dtype=slices.dtype)
        out = predict(self.denoiser, part, sig)
        return out.x0[:, 0, :h, :w], out.eps[:, 0, :h, :w]

    def predict(self, x: Tensor, sigma: float, with_grad: bool = False,
                overwrite: bool = False) -> tuple[Tensor, Tensor]:
        """(Z, Y, X) volume at noise ``sigma`` -> (x0_hat, eps_hat) volumes, in calls of
        :meth:`slices_per_call` slices written straight into the two result volumes (no copy of a list of parts).

        ``overwrite`` (no gradient only): eps_hat is written over ``x`` itself, a block of slices once its call has
        read it, and ``x`` is returned as eps_hat: a caller that needs ``x`` no more (the fast sampler) holds two
        volumes through the pass instead of three. The values are the same."""
        if overwrite and with_grad:
            raise ValueError("overwrite needs no gradient: the graph saves the network's input")
        self.evaluations += 1
        slices = to_slices(x, self.plane)
        n, h, w = slices.shape
        step = self.slices_per_call(h, w)
        ctx = torch.enable_grad() if with_grad else torch.no_grad()
        if step >= n:  # one call: its results are the volumes
            with ctx:
                x0s, epss = self.call(slices, sigma)
            return from_slices(x0s, self.plane), from_slices(epss, self.plane)
        with ctx:
            x0 = torch.empty(x.shape, device=x.device, dtype=x.dtype)
            eps = x if overwrite else torch.empty(x.shape, device=x.device, dtype=x.dtype)
            x0s, epss = to_slices(x0, self.plane), to_slices(eps, self.plane)
            for start in range(0, n, step):  # a block's results are written after its call: its input is read
                part_x0, part_eps = self.call(slices[start:start + step], sigma)
                x0s[start:start + step] = part_x0
                epss[start:start + step] = part_eps
                del part_x0, part_eps
        return x0, eps

    def predict_and_gradient(self, x: Tensor, sigma: float,
                             loss: Callable[[Tensor], Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """(x0_hat, eps_hat, the gradient of ``loss(x0_hat)`` with respect to ``x``) for DPS, holding the graph of one
        network call at a time (a pass with its graph kept would hold every call's: ~3600 bytes per pixel, 60 GB for
        64 slices of 512^2).

        The network treats each slice on its own, so the Jacobian of x0_hat is block diagonal over the slices: a
        pass without gradient gives x0_hat and eps_hat, ``loss`` is differentiated with respect to x0_hat alone (the
        operator's graph, not the network's), and each block of slices is run again with its graph to
        back-propagate its part of that gradient (:meth:`slices_per_call` with ``grad``). The same gradient as
        through one graph of the whole pass, for a second pass of network forwards (``Testing/Benchmarks/
        dps_memory.py``, 4 slices of 512^2: 0.36x the memory of one graph, 0.93x its time)."""
        x = x.detach()
        x0, eps = self.predict(x, sigma)
        leaf = x0.detach().requires_grad_(True)
        with torch.enable_grad():
            (dx0,) = torch.autograd.grad(loss(leaf), leaf)
        del leaf
        grad = torch.empty_like(x)
        slices, outer, grads = to_slices(x, self.plane), to_slices(dx0, self.plane), to_slices(grad, self.plane)
        n, h, w = slices.shape
        step = self.slices_per_call(h, w, grad=True)
        for start in range(0, n, step):
            part = slices[start:start + step].detach().requires_grad_(True)
            with torch.enable_grad():
                part_x0, _ = self.call(part, sigma)
                (part_grad,) = torch.autograd.grad(part_x0, part, grad_outputs=outer[start:start + step])
            grads[start:start + step] = part_grad
            del part, part_x0, part_grad
        return x0, eps, grad


def choose_prior(i: int, K: float, rng: torch.Generator | None) -> str:
    """TPDM's alternation: integer K -> K-1 primary turns then one auxiliary; fractional K -> primary with
    probability 1 - 1/K (K <= 1 means auxiliary only)."""
    if float(K).is_integer():
        k = int(K)
        if k <= 1:
            return "auxiliary"
        return "primary" if i % k < k - 1 else "auxiliary"
    p_primary = 1.0 - 1.0 / K
    u = float(torch.rand((), generator=rng)) if rng is not None else float(torch.rand(()))
    return "primary" if u < p_primary else "auxiliary"
