"""The fused kernels as TensorRT plugins: TensorRT's Python plugin API (`tensorrt.plugin`) with
ahead-of-time Triton. At engine build, each plugin's Triton kernel is compiled to PTX for the
build GPU and baked into the engine, so the engine runs with no Python (trtexec, C++).

    register()            registers talking_head::fused_attention and talking_head::warp_render
                          (call it before parsing an ONNX model exported inside
                          kernels.dispatch.plugin_export(); its nodes name these plugins)
    compile_attention(), compile_warp_render()
                          the AOT compilation alone (no TensorRT needed): kernel name, PTX,
                          threads per block, shared memory

The kernels take their arguments in TensorRT's AOT launch order: input pointers, the int32
scalars returned as extra arguments, output pointers. Triton (3.3+) appends two scratch
pointers to every kernel; TensorRT does not pass them, so they are dropped from the PTX entry
(only when the kernel never reads them, which holds for these kernels).

Needs TensorRT 10.14+ (`tensorrt.plugin` with `aot_impl`), triton, and a CUDA GPU at engine
build. Importing this module imports neither tensorrt nor triton.
"""

from dataclasses import dataclass

from kernels.plugin_nodes import ATTENTION, NAMESPACE, WARP_RENDER
from kernels.warp_render_layout import CURVE, GROUP, OVERLAYS, TABLES

TRITON_TYPES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16", "uint8": "u8"}


@dataclass
class AotKernel:
    name: str
    ptx: str
    threads: int            # threads per block: num_warps * 32
    shared: int             # dynamic shared memory, bytes


def drop_unused_params(ptx: str, name: str, keep: int) -> str:
    """The PTX with only the first `keep` parameters of entry `name`; the dropped ones must
    not be read by the body."""
    head, entry, rest = ptx.partition(f".entry {name}(")
    if not entry:
        raise ValueError(f"no entry {name} in the PTX")
    declared, close, body = rest.partition(")")
    params = [p.strip().rstrip(",") for p in declared.splitlines() if p.strip()]
    if len(params) < keep:
        raise ValueError(f"entry {name} has {len(params)} parameters, expected {keep}")
    for param in params[keep:]:
        if f"[{param.split()[-1]}]" in body:
            raise ValueError(f"entry {name} reads its extra parameter {param.split()[-1]}")
    return head + entry + "\n\t" + ",\n\t".join(params[:keep]) + "\n" + close + body


def compile_kernel(kernel, types: dict[str, str], constexprs: dict, num_warps: int = 4,
                   target=None) -> AotKernel:
    """Compile a @triton.jit kernel for TensorRT: types maps each non-constexpr argument to
    a Triton type ("*fp16", "i32"), in the kernel's order; target defaults to the current
    GPU (triton.backends.compiler.GPUTarget)."""
    import triton

    if target is None:
        target = triton.runtime.driver.active.get_current_target()
    signature = {name: types.get(name, "constexpr") for name in kernel.arg_names}
    if list(types) != [n for n in kernel.arg_names if n not in constexprs]:
        raise ValueError(f"argument types {list(types)} do not follow {kernel.arg_names}")
    # TensorRT's buffers are at least 256-byte aligned
    aligned = {(i,): [["tt.divisibility", 16]]
               for i, name in enumerate(kernel.arg_names) if types.get(name, "").startswith("*")}
    source = triton.compiler.ASTSource(fn=kernel, signature=signature, constexprs=constexprs,
                                       attrs=aligned)
    compiled = triton.compile(source, target=target, options={"num_warps": num_warps})
    meta = compiled.metadata
    if getattr(meta, "global_scratch_size", 0) or getattr(meta, "profile_scratch_size", 0):
        raise ValueError(f"{meta.name} needs scratch memory, which TensorRT does not pass")
    ptx = drop_unused_params(compiled.asm["ptx"], meta.name, len(types))
    return AotKernel(meta.name, ptx, meta.num_warps * 32, meta.shared)


def compile_attention(dtype: str, len_q: int, len_k: int, head_dim: int, causal: bool,
                      target=None) -> AotKernel:
    """kernels/attention.py for q, k, v, out of dtype ("float32", "float16", "bfloat16")."""
    import torch

    from kernels.attention import attention_kernel, constants

    t = "*" + TRITON_TYPES[dtype]
    types = {"Q": t, "K": t, "V": t}
    types |= {name: "i32" for name in attention_kernel.arg_names[3:18]}
    types["Out"] = t
    meta = constants(getattr(torch, dtype), len_q, len_k, head_dim, causal)
    return compile_kernel(attention_kernel, types, meta, target=target)


def compile_warp_render(target=None) -> AotKernel:
    """kernels/warp_render.py writing uint8 frames."""
    from kernels.warp_render import constants, warp_render_kernel

    types = {name: "*fp32" for name in ("Portrait", "Layers", "Offset", "Params", "Tables")}
    types |= {"size": "i32", "coarse": "i32", "Out": "*u8"}
    return compile_kernel(warp_render_kernel, types, constants(), target=target)


_registered = False


def register() -> None:
    """Register both plugins with TensorRT's plugin registry (once per process)."""
    global _registered
    if _registered:
        return
    import tensorrt as trt
    import tensorrt.plugin as trtp

    dtypes = {trt.float32: "float32", trt.float16: "float16", trt.bfloat16: "bfloat16"}

    def launch(kernel: AotKernel, grid: tuple, scalars: list):
        params = trtp.KernelLaunchParams()
        params.grid_x, params.grid_y, params.grid_z = grid
        params.block_x = kernel.threads
        params.shared_mem = kernel.shared
        extra = trtp.SymIntExprs.from_tuple([trtp.SymInt32(s) for s in scalars])
        return kernel.name, kernel.ptx, params, extra

    def constant(expr, default: int) -> int:
        return expr.constant_value if expr.is_constant else default

    # fused attention: q, k, v [B, H, L, D] -> out [B, H, Lq, D]
    @trtp.register(f"{NAMESPACE}::{ATTENTION}")
    def attention_desc(q: trtp.TensorDesc, k: trtp.TensorDesc, v: trtp.TensorDesc,
                       causal: int) -> trtp.TensorDesc:
        return q.like()

    @trtp.autotune(f"{NAMESPACE}::{ATTENTION}")
    def attention_autotune(q, k, v, outputs):
        return [trtp.AutoTuneCombination("FP32|FP16|BF16, FP32|FP16|BF16, FP32|FP16|BF16, "
                                         "FP32|FP16|BF16")]

    @trtp.aot_impl(f"{NAMESPACE}::{ATTENTION}")
    def attention_aot(q: trtp.TensorDesc, k: trtp.TensorDesc, v: trtp.TensorDesc, causal: int,
                      outputs, tactic: int):
        b, h, len_q, d = (q.shape_expr[i] for i in range(4))
        len_k = k.shape_expr[2]
        if not d.is_constant:
            raise ValueError("fused_attention: the head dim must be static")
        head_dim = d.constant_value
        # tile sizes from the static lengths (64 for dynamic ones)
        kernel = compile_attention(dtypes[q.dtype], constant(len_q, 64), constant(len_k, 64),
                                   head_dim, bool(causal))
        from kernels.attention import block_sizes

        block_m = block_sizes(constant(len_q, 64), constant(len_k, 64), head_dim)[0]
        q_strides = [h * len_q * head_dim, len_q * head_dim, head_dim]
        k_strides = [h * len_k * head_dim, len_k * head_dim, head_dim]
        scalars = q_strides + k_strides + k_strides + q_strides + [h, len_q, len_k]
        return launch(kernel, (trtp.cdiv(len_q, block_m), b * h, 1), scalars)

    # fused warp-render: portrait [7, S, S], layers [6, S, S], offset [N, 2, h, w], params,
    # tables
    # -> frames [N, S, S, 3] uint8
    @trtp.register(f"{NAMESPACE}::{WARP_RENDER}")
    def warp_render_desc(portrait: trtp.TensorDesc, layers: trtp.TensorDesc,
                         offset: trtp.TensorDesc, params: trtp.TensorDesc,
                         tables: trtp.TensorDesc) -> trtp.TensorDesc:
        n, size = offset.shape_expr[0], portrait.shape_expr[2]
        return trtp.from_shape_expr((n, size, size, 3), dtype=trt.uint8)

    @trtp.autotune(f"{NAMESPACE}::{WARP_RENDER}")
    def warp_render_autotune(portrait, layers, offset, params, tables, outputs):
        return [trtp.AutoTuneCombination("FP32, FP32, FP32, FP32, FP32, UINT8")]

    @trtp.aot_impl(f"{NAMESPACE}::{WARP_RENDER}")
    def warp_render_aot(portrait: trtp.TensorDesc, layers: trtp.TensorDesc,
                        offset: trtp.TensorDesc, params: trtp.TensorDesc,
                        tables: trtp.TensorDesc, outputs, tactic: int):
        from kernels.warp_render import BLOCK_H, BLOCK_W

        for expr, want in ((params.shape_expr[1], OVERLAYS), (params.shape_expr[2], GROUP),
                           (tables.shape_expr[1], TABLES), (tables.shape_expr[2], CURVE)):
            if expr.is_constant and expr.constant_value != want:
                raise ValueError("warp_render: params/tables do not follow "
                                 "kernels/warp_render_layout.py")
        n, size, coarse = offset.shape_expr[0], portrait.shape_expr[2], offset.shape_expr[3]
        kernel = compile_warp_render()
        grid = (trtp.cdiv(size, BLOCK_W), trtp.cdiv(size, BLOCK_H), n)
        return launch(kernel, grid, [size, coarse])

    _registered = True
