"""Statistics of one tensor that every probe shares: the signal propagation plots' channel statistics (Brock, De &
Smith 2021) and the correlation between the tokens of a sequence (rank collapse: Dong et al. 2021, Noci et al. 2022).

Each returns 0-d tensors on the tensor's device, in float32 at least (float64 for float64 tensors): no host
synchronisation, so a probe can stack them and move them to the host once. Sums, not torch.var/var_mean: on the CPU
the Welford reductions cost several times as much, and the two-pass sums below are exact where a mean dominates.

Channels: dim 1 of an (N, C, ...) tensor, the last dim of an (N, T, C) sequence (`channel_dim`).
"""

import torch


def _stat_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def by_channel(t: torch.Tensor, channel_dim: int = 1) -> torch.Tensor:
    """t as (elements per channel, channels), the channels last: rows are reduced over, so a reduction reads
    contiguous memory where t's channels are its last dim."""
    t = t.detach().to(_stat_dtype(t))
    channel_dim = channel_dim % t.dim()
    if channel_dim != t.dim() - 1:
        t = t.movedim(channel_dim, -1)
    return t.reshape(-1, t.shape[-1])


def channel_moments(t: torch.Tensor, channel_dim: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """(chan_sq_mean, chan_var): the mean over channels of each channel's squared mean, and of each channel's
    (biased) variance, both over the batch and every other dim. chan_sq_mean + chan_var = E[t^2]; with equal
    channel sizes, chan_var + chan_sq_mean = Var(t) + mean(t)^2 exactly."""
    rows = by_channel(t, channel_dim)  # (n, C)
    n = rows.shape[0]
    mean = rows.sum(0) / n  # (C,)
    deviation = rows - mean
    var = deviation.square().sum(0) / n
    return mean.square().mean(), var.mean()


def token_corr(t: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of the mean cosine similarity between different tokens of a sequence, for t of shape
    (N, T, C): 1 when every token points the same way (rank collapse), about 0 for independent tokens. Computed as
    (|sum_t u_t|^2 - T) / (T (T - 1)) with u_t = t_t / |t_t|, without making the unit vectors. nan for T < 2."""
    t = t.detach().to(_stat_dtype(t))
    n_tokens = t.shape[1]
    if n_tokens < 2:
        return torch.full((), float("nan"), dtype=t.dtype, device=t.device)
    inverse = torch.linalg.vector_norm(t, dim=-1).clamp_min(torch.finfo(t.dtype).tiny).reciprocal()  # (N, T)
    unit_sum = torch.bmm(inverse.unsqueeze(1), t).squeeze(1)  # (N, C)
    return ((unit_sum.square().sum(-1) - n_tokens) / (n_tokens * (n_tokens - 1))).mean()
