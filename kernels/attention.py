"""Fused attention forward as one Triton kernel (FlashAttention-2: online softmax, the score
matrix never leaves the chip).

    q [B, H, Lq, D], k, v [B, H, Lk, D] -> out [B, H, Lq, D] in q's dtype
    out = softmax(q k^T / sqrt(D), keys j <= i only if causal) v

Used by the motion DiT (D = 48, Lq = Lk = K + n <= 12 tokens) and Whisper's encoder (D = 64,
50 frames per window); any D up to 256 works (padded to a power of two under masks).
fp32 inputs take IEEE fp32 dot products; fp16/bf16 inputs use tensor cores with fp32
accumulation and softmax.

The kernel's arguments follow TensorRT's AOT plugin convention (input pointers, then int32
scalars, then the output pointer), so kernels/trt_plugins.py compiles this same function.
The plain torch reference is kernels/attention_reference.py. Importing this module imports
triton: model code goes through kernels/dispatch.py.
"""

import math
import os

import torch
import triton
import triton.language as tl

LOG2_E = 1.4426950408889634


@triton.jit
def attention_kernel(
    Q, K, V,                                        # [B, H, L, D] each, last dim contiguous
    stride_qb, stride_qh, stride_qm,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_ob, stride_oh, stride_om,
    heads, len_q, len_k,
    Out,                                            # [B, H, Lq, D]
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    QK_SCALE: tl.constexpr,                         # softmax scale * log2(e): exp2 below
    CAUSAL: tl.constexpr,
    DOT_FP32: tl.constexpr,                         # dot products on fp32 operands
    PRECISION: tl.constexpr,                        # "ieee" or "tf32" (fp32 operands only)
):
    # one program: BLOCK_M query rows of one (batch, head)
    start_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // heads
    h = bh % heads
    rows = start_m * BLOCK_M + tl.arange(0, BLOCK_M)                 # [M]
    dims = tl.arange(0, BLOCK_D)                                      # [D]
    dim_ok = dims < HEAD_DIM

    q_ptrs = Q + b * stride_qb + h * stride_qh + rows[:, None] * stride_qm + dims[None, :]
    q = tl.load(q_ptrs, mask=(rows[:, None] < len_q) & dim_ok[None, :], other=0.0)  # [M, D]
    if DOT_FP32:
        q = q.to(tl.float32)
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)               # running row maximum
    l_i = tl.zeros([BLOCK_M], tl.float32)                             # running row sum
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)                    # running p @ v

    end = len_k
    if CAUSAL:
        # keys past the block's last row are masked out; a key block past len_k is empty
        end = (start_m + 1) * BLOCK_M
    for start_n in range(0, end, BLOCK_N):
        cols = start_n + tl.arange(0, BLOCK_N)                        # [N]
        col_ok = cols < len_k
        kt = tl.load(k_base + cols[None, :] * stride_kn + dims[:, None],
                     mask=col_ok[None, :] & dim_ok[:, None], other=0.0)   # k^T [D, N]
        v = tl.load(v_base + cols[:, None] * stride_vn + dims[None, :],
                    mask=col_ok[:, None] & dim_ok[None, :], other=0.0)    # [N, D]
        if DOT_FP32:
            kt = kt.to(tl.float32)
            v = v.to(tl.float32)
        scores = tl.dot(q, kt, input_precision=PRECISION) * QK_SCALE  # [M, N], log2 units
        keep = col_ok[None, :]
        if CAUSAL:
            keep = keep & (cols[None, :] <= rows[:, None])
        scores = tl.where(keep, scores, float("-inf"))
        # every row keeps key 0 (or, without causal, any key), so m_new is finite
        m_new = tl.maximum(m_i, tl.max(scores, 1))
        p = tl.exp2(scores - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)                                  # rescales the old sums
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new

    out = acc / l_i[:, None]
    o_ptrs = Out + b * stride_ob + h * stride_oh + rows[:, None] * stride_om + dims[None, :]
    tl.store(o_ptrs, out.to(Out.dtype.element_ty),
             mask=(rows[:, None] < len_q) & dim_ok[None, :])


def block_sizes(len_q: int, len_k: int, head_dim: int) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_D): tiles of 16 to 64 rows/keys (tl.dot needs >= 16)."""
    block_m = min(64, max(16, triton.next_power_of_2(len_q)))
    block_n = min(64, max(16, triton.next_power_of_2(len_k)))
    return block_m, block_n, max(16, triton.next_power_of_2(head_dim))


def constants(dtype: torch.dtype, len_q: int, len_k: int, head_dim: int, causal: bool,
              interpret: bool = False) -> dict:
    """The kernel's constexpr arguments for these shapes (shared with the TensorRT plugin)."""
    block_m, block_n, block_d = block_sizes(len_q, len_k, head_dim)
    # Triton's interpreter multiplies bfloat16 dot operands wrongly (3.6): upcast there.
    dot_fp32 = dtype == torch.float32 or (interpret and dtype == torch.bfloat16)
    return dict(HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK_M=block_m, BLOCK_N=block_n,
                QK_SCALE=LOG2_E / math.sqrt(head_dim), CAUSAL=bool(causal),
                DOT_FP32=dot_fp32, PRECISION="ieee" if dot_fp32 else "tf32")


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              causal: bool = False) -> torch.Tensor:
    """softmax(q k^T / sqrt(D)) v for q [B, H, Lq, D], k, v [B, H, Lk, D] -> [B, H, Lq, D]
    (scaled_dot_product_attention's default scale; causal masks keys j > i)."""
    if q.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"attention: unsupported dtype {q.dtype}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError("attention: q, k and v must share a dtype")
    b, h, len_q, d = q.shape
    len_k = k.shape[2]
    if d > 256:
        raise ValueError(f"attention: head dim {d} > 256")
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    out = torch.empty(b, h, len_q, d, dtype=q.dtype, device=q.device)
    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    meta = constants(q.dtype, len_q, len_k, d, causal, interpret)
    grid = (triton.cdiv(len_q, meta["BLOCK_M"]), b * h)
    attention_kernel[grid](
        q, k, v,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        out.stride(0), out.stride(1), out.stride(2),
        h, len_q, len_k, out, num_warps=4, **meta)
    return out
