"""The renderer's per-pixel pass as one Triton kernel: warp, eyes, mouth, in one read of the
portrait and one write of the frame.

For every output pixel x of frame n (models/render.py `compose` is the torch reference):

    d      = bilinear(offset[n], x)                     coarse backward displacement, upsampled
    colour = bilinear(image, x + d)                     the warped portrait...
    colour = plate(x) + (colour - plate(x)) * bilinear(matte, x + d)
                                                        ...the person over the still plate
    eyes   in each eye's window: eyelid and gaze (models/eyes.py) move the sampling point,
           the shut lid blends to smooth skin (smooth image), its lashes hang below the
           margin, the lash line darkens
    mouth  in the mouth's window: cavity, teeth and tongue (models/mouth.py) over the colour,
           by how far the lips part; the portrait's own opening (a smile's teeth) over
           them, sampled where it lies on the skull
    out    = colour rounded to uint8 [N, S, S, 3] (or float, for tests)

Inputs (all float32, contiguous):
    portrait           [7, S, S]       the portrait (0..255), the person's matte (0..1) and
                                       the photo as it shows its mouth (Avatar.own_mouth)
    layers             [6, S, S]       the portrait blurred and the background plate, 0..255
    offset             [N, 2, h, w]    backward displacement on the coarse grid, pixels
    params, tables     per-frame overlay parameters and curve tables: the layout is in
                       kernels/warp_render_layout.py (the kernel loads fields by position)
models/render_fused.py packs params and tables from the avatar and the motion. The
argument order follows TensorRT's AOT plugin convention (inputs, int32 scalars, output).
Importing this module imports triton: model code goes through kernels/dispatch.py.
"""

import torch
import triton
import triton.language as tl

from kernels.warp_render_layout import CURVE, GROUP, OVERLAYS, TABLES

BLOCK_H, BLOCK_W = 8, 64


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _clamp01(x):
    return tl.minimum(tl.maximum(x, 0.0), 1.0)


@triton.jit
def _smoothstep(t):
    return t * t * (3.0 - 2.0 * t)


@triton.jit
def _lookup(table, u, start, stop, CURVE: tl.constexpr):
    """Linear lookup of a CURVE-sample table spanning start..stop at u (models/curves.Lookup)."""
    position = _clamp01((u - start) / tl.maximum(stop - start, 1e-4)) * (CURVE - 1)
    below = tl.minimum(tl.floor(position), CURVE - 2)
    frac = position - below
    i = below.to(tl.int32)
    a = tl.load(table + i)
    b = tl.load(table + i + 1)
    return a + (b - a) * frac


@triton.jit
def _bilinear(plane, x, y, size_w, size_h):
    """Bilinear lookup of one plane [size_h, size_w] at (x, y) in its pixel coordinates,
    clamped at the border (grid_sample, padding_mode="border", align_corners=False)."""
    x = tl.minimum(tl.maximum(x, 0.0), size_w - 1.0)
    y = tl.minimum(tl.maximum(y, 0.0), size_h - 1.0)
    x0 = tl.floor(x)
    y0 = tl.floor(y)
    wx = x - x0
    wy = y - y0
    i0 = x0.to(tl.int32)
    j0 = y0.to(tl.int32)
    i1 = tl.minimum(i0 + 1, size_w - 1)
    j1 = tl.minimum(j0 + 1, size_h - 1)
    top = tl.load(plane + j0 * size_w + i0) * (1.0 - wx) + tl.load(plane + j0 * size_w + i1) * wx
    bottom = tl.load(plane + j1 * size_w + i0) * (1.0 - wx) + tl.load(plane + j1 * size_w + i1) * wx
    return top * (1.0 - wy) + bottom * wy


@triton.jit
def _displacement(offset, x, y, size, coarse):
    """The coarse backward displacement [2, coarse, coarse] (pixels) at output pixel
    positions (x, y): the grid's nodes sit at pixel (i + 0.5) * size / coarse - 0.5."""
    ratio = coarse / size
    cx = (x + 0.5) * ratio - 0.5
    cy = (y + 0.5) * ratio - 0.5
    dx = _bilinear(offset, cx, cy, coarse, coarse)
    dy = _bilinear(offset + coarse * coarse, cx, cy, coarse, coarse)
    return dx, dy


@triton.jit
def _rgb(image, x, y, size):
    plane = size * size
    r = _bilinear(image, x, y, size, size)
    g = _bilinear(image + plane, x, y, size, size)
    b = _bilinear(image + 2 * plane, x, y, size, size)
    return r, g, b


@triton.jit
def _eye(image, smooth, offset, p, top_table, bottom_table, x, y, size, coarse,
         CURVE: tl.constexpr):
    """One eye's colour at output pixels (x, y) (models/eyes.py eyelid + render.compose).
    p points at the eye's EYE_FIELDS."""
    cx = tl.load(p + 4)
    cy = tl.load(p + 5)
    ax = tl.load(p + 6)
    ay = tl.load(p + 7)
    hw = tl.load(p + 8)
    close_upper = tl.load(p + 13)
    close_lower = tl.load(p + 14)
    overshoot = tl.load(p + 15)
    skin = tl.load(p + 16)
    skin_below = tl.load(p + 17)
    lid_below = tl.load(p + 18)
    edge = tl.load(p + 24)
    nx = -ay                                                 # the normal, towards the chin
    ny = ax
    dx = x - cx
    dy = y - cy
    u = (dx * ax + dy * ay) / hw
    v = dx * nx + dy * ny
    top = _lookup(top_table, u, tl.load(p + 9), tl.load(p + 10), CURVE)
    bottom = _lookup(bottom_table, u, tl.load(p + 11), tl.load(p + 12), CURVE)
    opening = tl.maximum(bottom - top, 0.0)
    across = tl.maximum(1.0 - u * u, 0.0)                   # 1 mid-eye, 0 at the corners

    # the upper lid slides down (its margin and lashes rigidly), the lower lid rises to
    # meet it
    closure = opening + overshoot * tl.sqrt(across + 0.05)
    margin = top + close_upper * closure
    margin_below = bottom - close_lower * closure
    lash_band = tl.load(p + 28)
    slide = margin - top
    lid = slide + skin - lash_band
    t = _clamp01((v - top + skin) / lid)
    on_strip = v > top - skin
    lid_shift = -slide * _smoothstep(t)
    closed = slide / (slide + skin)
    on_lid = _sigmoid((margin - v) / edge)
    ramp = _clamp01(t / tl.load(p + 25))
    in_band = _clamp01((v - margin + lash_band) / (tl.load(p + 29) * lash_band + 1e-3) + 0.5)
    closing = tl.load(p + 30)
    smoothing = (tl.minimum(closed / tl.load(p + 26), 1.0) * _smoothstep(ramp)
                 * (1.0 - in_band * (1.0 - closing)))
    lid_weight = on_lid * tl.where(on_strip, smoothing, 0.0)
    rise = bottom - margin_below
    t_below = _clamp01((bottom + skin_below - v) / (rise + skin_below))
    below_shift = rise * _smoothstep(t_below)
    on_lower_lid = _sigmoid((v - margin_below) / edge)

    # gaze slides the eyeball inside the visible opening
    visible = _sigmoid((v - margin) / edge) * _sigmoid((margin_below - v) / edge)
    along = tl.load(p + 19) * across * visible
    down = tl.load(p + 20) * across * visible
    shift_v = lid_shift * on_lid + below_shift * on_lower_lid + down

    # the lashes of a closing lid hang below the margin, mirrored
    hang_at = (v - margin) / lash_band
    hanging = closing * _sigmoid((v - margin) / edge) * _clamp01(1.0 - hang_at)
    hang = top - _clamp01(hang_at) * lash_band - v

    # the lash line of a closing lid
    lash = tl.load(p + 21)
    band = tl.exp(-((v - margin + 0.5 * lash) / lash) * ((v - margin + 0.5 * lash) / lash))
    darken = tl.load(p + 22) * band * _clamp01(opening / tl.load(p + 23))

    # sample: the eye where it looks, the smooth skin above the lid strip and below the eye,
    # the hanging lashes
    wx = x + along * ax + shift_v * nx
    wy = y + along * ay + shift_v * ny
    ddx, ddy = _displacement(offset, wx, wy, size, coarse)
    r, g, b = _rgb(image, wx + ddx, wy + ddy, size)
    above = top - skin - v
    wx = x + above * nx
    wy = y + above * ny
    ddx, ddy = _displacement(offset, wx, wy, size, coarse)
    r_up, g_up, b_up = _rgb(smooth, wx + ddx, wy + ddy, size)
    below = bottom + lid_below - v
    wx = x + below * nx
    wy = y + below * ny
    ddx, ddy = _displacement(offset, wx, wy, size, coarse)
    r_lo, g_lo, b_lo = _rgb(smooth, wx + ddx, wy + ddy, size)
    wx = x + hang * nx
    wy = y + hang * ny
    ddx, ddy = _displacement(offset, wx, wy, size, coarse)
    r_la, g_la, b_la = _rgb(image, wx + ddx, wy + ddy, size)
    mix = tl.load(p + 27) * t
    r = r + (r_up + (r_lo - r_up) * mix - r) * lid_weight
    g = g + (g_up + (g_lo - g_up) * mix - g) * lid_weight
    b = b + (b_up + (b_lo - b_up) * mix - b) * lid_weight
    keep = 1.0 - darken
    r = (r + (tl.minimum(r, r_la) - r) * hanging) * keep
    g = (g + (tl.minimum(g, g_la) - g) * hanging) * keep
    b = (b + (tl.minimum(b, b_la) - b) * hanging) * keep
    return r, g, b


@triton.jit
def _mouth(image, p, tables, x, y, r, g, b, size, CURVE: tl.constexpr):
    """The mouth interior over colour (r, g, b) at output pixels (x, y) (models/mouth.py).
    p points at the MOUTH_FIELDS, tables at the upper lip, lower lip, opening, shade, and
    own upper and lower lip rows; image is the photo as it shows its mouth (its own opening,
    on the skull: Avatar.own_mouth)."""
    cx = tl.load(p + 4)
    cy = tl.load(p + 5)
    ax = tl.load(p + 6)
    ay = tl.load(p + 7)
    half = tl.load(p + 8)
    fs = tl.load(p + 9)
    start = tl.load(p + 10)
    stop = tl.load(p + 11)
    gap_mid = tl.load(p + 19)
    edge = tl.load(p + 20)
    dx = x - cx
    dy = y - cy
    u = (dx * ax + dy * ay) / half
    v = dx * -ay + dy * ax
    upper = _lookup(tables, u, start, stop, CURVE)
    lower = _lookup(tables + CURVE, u, start, stop, CURVE)
    opened = _lookup(tables + 2 * CURVE, u, start, stop, CURVE)
    gap = lower - upper

    # the teeth: arch coordinate ta in [-1, 1]
    ta = (u * half - tl.load(p + 12)) / tl.load(p + 13)
    ta2 = ta * ta
    upper_edge = tl.load(p + 14) + (tl.load(p + 15) - tl.load(p + 16) * ta2)
    lower_edge = tl.load(p + 17) - (tl.load(p + 18) - 0.7 * tl.load(p + 16) * ta2)
    on_arch = _sigmoid((1.0 - tl.abs(ta)) / 0.08)
    upper_teeth = _sigmoid((upper_edge - v) / edge) * on_arch
    lower_teeth = _sigmoid((v - lower_edge) / edge) * on_arch
    shade = _lookup(tables + 3 * CURVE, ta, tl.load(p + 30), tl.load(p + 31), CURVE)

    # cavity, tongue, the lips' inward curl
    across = _clamp01((v - upper) / tl.maximum(gap, 1.0))
    back = 4.0 * across * (1.0 - across)
    light = (0.16 - 0.09 * back) * (1.0 - 0.35 * u * u)
    bulge = tl.sqrt(tl.maximum(1.0 - (u / 0.85) * (u / 0.85), 0.0) + 1e-6)
    tongue_top = lower - (0.38 * gap_mid - 0.02 * fs) * bulge
    wide_open = _clamp01((gap_mid - 0.05 * fs) / (0.06 * fs))
    tongue = _sigmoid((v - tongue_top) / 1.2) * wide_open
    tongue_light = 0.55 + 0.45 * _clamp01((v - tongue_top) / (0.04 * fs))
    curl = tl.load(p + 51)
    inset = curl + (1.0 - curl) * _clamp01(tl.minimum(v - upper, lower - v) / tl.load(p + 52))

    w_upper = upper_teeth
    w_lower = lower_teeth * (1.0 - w_upper)
    rest = (1.0 - w_upper) * (1.0 - lower_teeth)
    w_tongue = rest * tongue
    w_cavity = rest * (1.0 - tongue)
    from_upper_lip = _clamp01((v - upper) / tl.load(p + 54))
    shadow = tl.load(p + 53)
    under_lip = shadow + (1.0 - shadow) * from_upper_lip
    teeth = (w_upper * under_lip + w_lower * tl.load(p + 55)) * shade * inset
    tongue_w = w_tongue * tongue_light * inset
    cavity_w = w_cavity * light * inset
    mr = teeth * tl.load(p + 24) + tongue_w * tl.load(p + 27) + cavity_w * tl.load(p + 21)
    mg = teeth * tl.load(p + 25) + tongue_w * tl.load(p + 28) + cavity_w * tl.load(p + 22)
    mb = teeth * tl.load(p + 26) + tongue_w * tl.load(p + 29) + cavity_w * tl.load(p + 23)

    # over it all, the portrait's own opening where it lies on the skull: above it its teeth's
    # top row continued, then gum; its foot faded as far as the lower lip has dropped
    own_top = _lookup(tables + 4 * CURVE, u, start, stop, CURVE)
    own_bottom = _lookup(tables + 5 * CURVE, u, start, stop, CURVE)
    own_gap = own_bottom - own_top
    depth = (v - own_top) / tl.maximum(own_gap, 1.0)
    low = tl.load(p + 40)
    shown = _clamp01((own_gap / fs - low) / (tl.load(p + 41) - low))
    fade = tl.load(p + 39)
    kept = _clamp01((tl.load(p + 38) + fade - depth) / fade)
    dropped = _clamp01((lower - own_bottom) / tl.load(p + 42))
    teeth_low = tl.load(p + 44)
    teeth_shown = _clamp01((own_gap / fs - teeth_low) / (tl.load(p + 45) - teeth_low))
    inside = _sigmoid((v - own_top) / edge)
    w_own = (inside + (1.0 - inside) * teeth_shown) * (1.0 - dropped * (1.0 - kept)) * shown
    # painted: the opening beyond the portrait's own, and all of it where the own is kept
    parted = _clamp01(gap / (0.008 * fs))                   # models.mouth.PARTING
    coverage = (_sigmoid((v - upper) / edge) * _sigmoid((lower - v) / edge)
                * (opened + (1.0 - opened) * shown * parted))
    lift = tl.maximum(own_top + tl.load(p + 43) * own_gap - v, 0.0)
    ox = x - lift * ay                                       # lifted along the normal
    oy = y + lift * ax
    sx = tl.load(p + 32) * ox + tl.load(p + 33) * oy + tl.load(p + 34)
    sy = tl.load(p + 35) * ox + tl.load(p + 36) * oy + tl.load(p + 37)
    own_r, own_g, own_b = _rgb(image, sx, sy, size)
    gum = _clamp01((own_top - v - tl.load(p + 46)) / tl.load(p + 47))
    own_r = own_r + (tl.load(p + 48) - own_r) * gum
    own_g = own_g + (tl.load(p + 49) - own_g) * gum
    own_b = own_b + (tl.load(p + 50) - own_b) * gum
    mr = mr + (own_r - mr) * w_own
    mg = mg + (own_g - mg) * w_own
    mb = mb + (own_b - mb) * w_own
    r = r + (tl.minimum(tl.maximum(mr, 0.0), 255.0) - r) * coverage
    g = g + (tl.minimum(tl.maximum(mg, 0.0), 255.0) - g) * coverage
    b = b + (tl.minimum(tl.maximum(mb, 0.0), 255.0) - b) * coverage
    return r, g, b


@triton.jit
def _in_window(p, x, y, x0, y0, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    """Whether the tile starting at (x0, y0) meets the overlay's window, and which of its
    pixels (x, y) lie inside."""
    ox = tl.load(p)
    oy = tl.load(p + 1)
    width = tl.load(p + 2)
    height = tl.load(p + 3)
    meets = (x0 < ox + width) & (x0 + BLOCK_W > ox) & (y0 < oy + height) & (y0 + BLOCK_H > oy)
    inside = (x >= ox) & (x < ox + width) & (y >= oy) & (y < oy + height)
    return meets, inside


@triton.jit
def warp_render_kernel(
    Portrait, Layers,           # [7, S, S], [6, S, S] float32 (see the module doc)
    Offset,                     # [N, 2, h, w] float32, pixels
    Params,                     # [N, 3, GROUP] float32
    Tables,                     # [N, TABLES, CURVE] float32
    size, coarse,
    Out,                        # [N, S, S, 3] uint8 (or float32 with OUT_FLOAT)
    BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr, CURVE: tl.constexpr,
    GROUP: tl.constexpr, TABLES: tl.constexpr, OUT_FLOAT: tl.constexpr,
):
    # one program: a BLOCK_H x BLOCK_W tile of frame n
    x0 = tl.program_id(0) * BLOCK_W
    y0 = tl.program_id(1) * BLOCK_H
    n = tl.program_id(2)
    cols = x0 + tl.arange(0, BLOCK_W)
    rows = y0 + tl.arange(0, BLOCK_H)
    in_frame = (rows[:, None] < size) & (cols[None, :] < size)            # [BH, BW]
    x = tl.zeros([BLOCK_H, BLOCK_W], tl.float32) + cols[None, :].to(tl.float32)
    y = tl.zeros([BLOCK_H, BLOCK_W], tl.float32) + rows[:, None].to(tl.float32)
    offset = Offset + n * 2 * coarse * coarse
    params = Params + n * 3 * GROUP
    tables = Tables + n * TABLES * CURVE

    # the warped portrait, as the person over the still background plate
    dx, dy = _displacement(offset, x, y, size, coarse)
    r, g, b = _rgb(Portrait, x + dx, y + dy, size)
    plane = size * size
    alpha = _bilinear(Portrait + 3 * plane, x + dx, y + dy, size, size)
    here = Layers + 3 * plane + rows[:, None] * size + cols[None, :]
    plate_r = tl.load(here, mask=in_frame, other=0.0)
    plate_g = tl.load(here + plane, mask=in_frame, other=0.0)
    plate_b = tl.load(here + 2 * plane, mask=in_frame, other=0.0)
    r = plate_r + (r - plate_r) * alpha
    g = plate_g + (g - plate_g) * alpha
    b = plate_b + (b - plate_b) * alpha
    for side in tl.static_range(2):                           # eye 1 is drawn over eye 0
        p = params + side * GROUP
        meets, inside = _in_window(p, x, y, x0, y0, BLOCK_H, BLOCK_W)
        if meets:
            er, eg, eb = _eye(Portrait, Layers, offset, p, tables + 2 * side * CURVE,
                              tables + (2 * side + 1) * CURVE, x, y, size, coarse, CURVE)
            r = tl.where(inside, er, r)
            g = tl.where(inside, eg, g)
            b = tl.where(inside, eb, b)
    p = params + 2 * GROUP
    meets, inside = _in_window(p, x, y, x0, y0, BLOCK_H, BLOCK_W)
    if meets:
        mr, mg, mb = _mouth(Portrait + 4 * size * size, p, tables + 4 * CURVE, x, y, r, g, b,
                            size, CURVE)
        r = tl.where(inside, mr, r)
        g = tl.where(inside, mg, g)
        b = tl.where(inside, mb, b)

    out = Out + ((n * size + rows[:, None]) * size + cols[None, :]) * 3   # [BH, BW] pixels
    if OUT_FLOAT:
        tl.store(out, r, mask=in_frame)
        tl.store(out + 1, g, mask=in_frame)
        tl.store(out + 2, b, mask=in_frame)
    else:                       # round half up, as the torch renderer does (add 0.5, truncate)
        tl.store(out, (tl.minimum(tl.maximum(r, 0.0), 255.0) + 0.5).to(tl.uint8), mask=in_frame)
        tl.store(out + 1, (tl.minimum(tl.maximum(g, 0.0), 255.0) + 0.5).to(tl.uint8),
                 mask=in_frame)
        tl.store(out + 2, (tl.minimum(tl.maximum(b, 0.0), 255.0) + 0.5).to(tl.uint8),
                 mask=in_frame)


def constants(out_float: bool = False, block: tuple[int, int] = (BLOCK_H, BLOCK_W)) -> dict:
    """The kernel's constexpr arguments (shared with the TensorRT plugin)."""
    return dict(BLOCK_H=block[0], BLOCK_W=block[1], CURVE=CURVE, GROUP=GROUP, TABLES=TABLES,
                OUT_FLOAT=out_float)


def warp_render(portrait: torch.Tensor, layers: torch.Tensor, offset: torch.Tensor,
                params: torch.Tensor, tables: torch.Tensor, out_float: bool = False,
                block: tuple[int, int] = (BLOCK_H, BLOCK_W)) -> torch.Tensor:
    """Frames [N, S, S, 3] (uint8, or float32 0..255 with out_float) from the portrait with
    its matte and its own mouth [7, S, S], its smooth copy with the background plate
    [6, S, S], the coarse displacement [N, 2, h, w] and the per-frame
    overlay parameters [N, 3, GROUP] and tables [N, TABLES, CURVE] (see the module doc).
    block: the (rows, columns) of pixels one program draws (powers of two)."""
    n, size, coarse = offset.shape[0], portrait.shape[-1], offset.shape[-1]
    if params.shape[1:] != (OVERLAYS, GROUP) or tables.shape[1:] != (TABLES, CURVE):
        raise ValueError(f"warp_render: params {tuple(params.shape)}, tables "
                         f"{tuple(tables.shape)} do not match [N, {OVERLAYS}, {GROUP}], "
                         f"[N, {TABLES}, {CURVE}]")
    if portrait.shape[0] != 7 or layers.shape[0] != 6:
        raise ValueError(f"warp_render: portrait {tuple(portrait.shape)}, layers "
                         f"{tuple(layers.shape)} are not [7, S, S], [6, S, S]")
    portrait, layers, offset, params, tables = (t.float().contiguous() for t in
                                                (portrait, layers, offset, params, tables))
    out = torch.empty(n, size, size, 3, device=portrait.device,
                      dtype=torch.float32 if out_float else torch.uint8)
    grid = (triton.cdiv(size, block[1]), triton.cdiv(size, block[0]), n)
    warp_render_kernel[grid](portrait, layers, offset, params, tables, size, coarse, out,
                             num_warps=4, **constants(out_float, block))
    return out
