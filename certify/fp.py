"""Floating-point soundness: rounding error as extra noise symbols, bounded a priori.

The abstract domains are exact only over the reals, while the network runs in float32. In
`sound_fp` mode the analysis runs in float64 and, after every layer, widens each output by a
fresh, independent +-e (a new generator per neuron, or a wider box for IBP), where e bounds

    |float32 layer(x~) - real layer(x~)|  +  |float64 analysis - real analysis|

for every float32 input x~ the abstract input already holds. The fresh symbols then travel
through the later layers like any other generator, so errors cancel where the weights do,
and the final margins hold for the network as float32 executes it: the fp32 output at any
point of the region is the real network's output perturbed by errors the zonotope covers.

The per-layer bound is Higham's a-priori bound for a dot product of length n in precision u,
|fl(w . x) - w . x| <= gamma_n(u) |w| . |x|, gamma_n(u) = n u / (1 - n u), which holds for any
summation order (blocked GEMM, im2col and direct convolution alike). |x| is bounded by the
abstract input's own max(|lo|, |hi|), which bounds both the float32 values and the sum of
|terms| the float64 analysis adds up (|c| + sum |g| per neuron, over at most `symbols` terms).

Assumptions, stated rather than hidden: float32 dot products, or TF32 ones (u = 2^-11) on a GPU
where torch allows TF32 (cuDNN convolutions do by default; `executed_roundoff` checks);
Winograd/FFT convolution algorithms have larger constants than gamma_n and are not covered;
first order (O(u^2) terms, below 1e-13 relative, ignored).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

FLOAT32_ROUNDOFF = 2.0**-24
TF32_ROUNDOFF = 2.0**-11
FLOAT64_ROUNDOFF = 2.0**-53


def executed_roundoff(device: torch.device) -> float:
    """Unit roundoff of the network's own float32 arithmetic on `device` (TF32 where allowed)."""
    tf32 = torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.allow_tf32
    return TF32_ROUNDOFF if device.type == "cuda" and tf32 else FLOAT32_ROUNDOFF


@dataclass(frozen=True)
class Rounding:
    """Unit roundoffs of the executed network and of the analysis, and the generator count.

    `symbols` bounds the number of noise symbols (input elements plus all neurons), which is the
    length of the sums of |coefficients| the analysis performs.
    """

    symbols: int
    float32_roundoff: float = FLOAT32_ROUNDOFF
    analysis_roundoff: float = FLOAT64_ROUNDOFF

    def affine(self, n: int) -> float:
        """Relative error of an n-term dot product, executed in float32 and analysed in float64."""
        return gamma(n, self.float32_roundoff) + gamma(n + self.symbols, self.analysis_roundoff)

    def analysis(self, n: int) -> float:
        """Relative error of n operations that only the analysis performs (ReLU slopes, boxes)."""
        return gamma(n + self.symbols, self.analysis_roundoff)


def gamma(n: int, u: float) -> float:
    """Higham's gamma_n(u) = n u / (1 - n u)."""
    if n * u >= 1:
        raise ValueError(f"gamma_n undefined for n={n}, u={u}")
    return n * u / (1 - n * u)
