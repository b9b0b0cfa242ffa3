"""Statistics of one tensor that every probe shares: the signal propagation plots' channel statistics (Brock, De &
Smith 2021), the correlation between the tokens of a sequence (rank collapse: Dong et al. 2021, Noci et al. 2022),
and a whole tensor's mean and variance.

Each returns 0-d tensors on the tensor's device, in float32 at least (float64 for float64 tensors): no host
synchronisation, so a probe can stack them and move them to the host once. Sums, not torch.var/var_mean: on the CPU
the Welford reductions cost several times as much, and the two-pass sums below stay accurate where a mean
dominates.

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


def channel_mean_var(t: torch.Tensor, channel_dim: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Each channel's mean and (biased) variance over the batch and every other dim: two (C,) tensors, two passes
    (the mean, then the squared deviations from it)."""
    rows = by_channel(t, channel_dim)  # (n, C)
    n = rows.shape[0]
    mean = rows.sum(0) / n  # (C,)
    deviation = rows - mean  # a temporary: squared in place, one tensor made rather than two
    return mean, deviation.square_().sum(0) / n


def channel_moments(t: torch.Tensor, channel_dim: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """(chan_sq_mean, chan_var): the mean over channels of each channel's squared mean, and of each channel's
    (biased) variance, both over the batch and every other dim. chan_sq_mean + chan_var = E[t^2]; with equal
    channel sizes, chan_var + chan_sq_mean = Var(t) + mean(t)^2 exactly."""
    mean, var = channel_mean_var(t, channel_dim)
    return mean.square().mean(), var.mean()


def all_moments(t: torch.Tensor, channel_dim: int = 1) -> tuple[torch.Tensor, ...]:
    """(mean, var, chan_sq_mean, chan_var) from one pair of passes over t: the channel moments above, and the whole
    tensor's mean and (biased) variance from its equal-sized channels' by the law of total variance (the mean of
    the channel variances plus the variance of the channel means)."""
    mean, var = channel_mean_var(t, channel_dim)
    total = mean.mean()
    return total, var.mean() + (mean - total).square().mean(), mean.square().mean(), var.mean()


def raw_moments(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(E[t], E[t^2]) in one pass each and no temporary tensor: for weights and their gradients, whose mean is small
    against their spread, so E[t^2] - E[t]^2 loses nothing (it is exactly 0 for a norm's gamma = 1)."""
    flat = t.detach().reshape(-1).to(_stat_dtype(t))
    return flat.sum() / flat.numel(), flat.dot(flat) / flat.numel()


def moments(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and (biased) variance of all elements, in two passes: the variance is off by the square of the mean's
    rounding error only, where E[t^2] - E[t]^2 would lose about eps * mean^2 (a gradient through a final norm's bias
    can have |mean| >> std)."""
    flat = t.detach().reshape(-1).to(_stat_dtype(t))
    mean = flat.sum() / flat.numel()
    deviation = flat - mean
    return mean, deviation.dot(deviation) / flat.numel()


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
