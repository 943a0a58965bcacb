"""Plain torch reference for kernels/attention.py: the attention math written out in fp32.

    q [B, H, Lq, D], k, v [B, H, Lk, D] -> softmax(q k^T / sqrt(D) + causal mask) v [B, H, Lq, D]

It is what F.scaled_dot_product_attention computes (default scale, top-left causal mask),
in fp32 whatever the input dtype, returned in q's dtype.
"""

import math

import torch


def attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                        causal: bool = False) -> torch.Tensor:
    len_q, len_k, d = q.shape[-2], k.shape[-2], q.shape[-1]
    scores = q.float() @ k.float().transpose(-1, -2) / math.sqrt(d)      # [B, H, Lq, Lk]
    if causal:
        later = torch.ones(len_q, len_k, dtype=torch.bool, device=q.device).triu(1)
        scores = scores.masked_fill(later, float("-inf"))
    return (torch.softmax(scores, dim=-1) @ v.float()).to(q.dtype)
