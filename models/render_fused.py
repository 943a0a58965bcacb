"""The renderer's per-pixel pass on the GPU, as the fused kernel of kernels/warp_render.py.

Per frame, the overlays come down to a few numbers and curve tables, the same ones
models/eyes.py and models/mouth.py compute per frame before their per-pixel work: each
overlay's window and feature frame, the lid and lip curves tabulated over u, and the modules'
constants scaled to pixels. `overlay_inputs` packs them in the kernel's layout
(kernels/warp_render_layout.py); the kernel then does render.compose's whole per-pixel work
in one pass. tests/test_kernels.py checks the two against each other.
"""

import torch

from kernels import dispatch
from kernels.warp_render_layout import CURVE, EYE_FIELDS, GROUP, MOUTH_FIELDS
from models import eyes
from models import mouth as mouth_shape
from models.constants import table, take
from models.curves import CURVE_SAMPLES, curve_table, feature_frame, project
from models.render import (
    _BLINKS,
    _E,
    EYE_WINDOW,
    MOUTH_WINDOW,
    eye_window_centre,
    window_origin,
    window_size,
)

assert CURVE == CURVE_SAMPLES


def _frame(left: torch.Tensor, right: torch.Tensor):
    """The feature frame from corner left to corner right [N, 2]: half width [N] and
    (centre, axis, normal)."""
    _, _, half, frame = feature_frame(left[:, None], left, right)
    return half, frame


def _pack(fields: dict, names: tuple[str, ...], n: int, like: torch.Tensor) -> torch.Tensor:
    """One overlay's parameters [N, GROUP] in the order of names (numbers broadcast; filled on
    the device, not copied from the host)."""
    columns = [like.new_full((n,), fields[name]) if isinstance(fields[name], float)
               else fields[name].to(like.dtype).expand(n) for name in names]
    row = torch.stack(columns, 1)
    return torch.cat([row, row.new_zeros(n, GROUP - len(names))], 1)


def _window_fields(origin, height, width, centre, axis, half) -> dict:
    return dict(origin_x=origin[:, 0], origin_y=origin[:, 1], width=float(width),
                height=float(height), centre_x=centre[:, 0], centre_y=centre[:, 1],
                axis_x=axis[:, 0], axis_y=axis[:, 1], half=half)


def eye_inputs(eye, blink, gaze, lid_skin, face_width, scale, size, frame_size):
    """One eye [N, 6, 2] (without the blink), blink [N], gaze [N, 2]: its parameters
    [N, GROUP] and lid tables [N, 2, CURVE] (models/eyes.py eyelid, per frame). size: the
    image's, frame_size: the one the overlay windows are sized for (render.compose)."""
    left, upper, right, lower = eyes.EYE
    half, frame = _frame(eye[:, left], eye[:, right])
    centre, axis, _ = frame
    top_u, top_v = project(take(eye, (left, *upper, right)), frame, half)
    bottom_u, bottom_v = project(take(eye, (left, *lower, right)), frame, half)
    top = curve_table(top_u, top_v, top_u[:, :1], top_u[:, -1:])
    bottom = curve_table(bottom_u, bottom_v, bottom_u[:, :1], bottom_u[:, -1:])
    height, width = window_size(frame_size, EYE_WINDOW)
    origin = window_origin(eye_window_centre(eye, face_width, scale), height, width, size)
    closing = torch.clamp((blink - 0.15) / 0.6, 0.0, 1.0)
    fields = _window_fields(origin, height, width, centre, axis, half) | dict(
        top_start=top_u[:, 0], top_stop=top_u[:, -1],
        bottom_start=bottom_u[:, 0], bottom_stop=bottom_u[:, -1],
        close_upper=blink * eyes.MEET, close_lower=blink * (1.0 - eyes.MEET),
        overshoot=eyes.LID_OVERSHOOT * half, skin=lid_skin[0] * half,
        skin_below=eyes.LOWER_LID_SKIN * half, lid_below=eyes.LID_BELOW * half,
        gaze_along=-gaze[:, 0] * eyes.GAZE_X * half, gaze_down=-gaze[:, 1] * eyes.GAZE_Y * half,
        lash=torch.clamp(eyes.LASH_WIDTH * half, min=0.6), lash_dark=eyes.LASH_DARKEN * closing,
        open_full=0.15 * half, edge=eyes.EDGE, lid_ramp=eyes.LID_RAMP,
        lid_max_closed=eyes.LID_MAX_CLOSED, lid_mix=eyes.LID_MIX, lash_band=lid_skin[1] * half,
        band_fade=eyes.BAND_FADE, closing=closing)
    return _pack(fields, EYE_FIELDS, eye.shape[0], half), torch.stack([top, bottom], 1)


def mouth_inputs(lips, rest_lips, own_lips, jaw_lips, face_size, colors, skull_map, size,
                 frame_size):
    """The mouth (inner lips [N, 8, 2] as moved, at rest, as the photo shows them, moved by
    the jaw only; face_size [N] pixels per face width; colors [3, 3]; skull_map [N, 2, 3]):
    its parameters [N, GROUP] and tables [N, 6, CURVE]: upper lip, lower lip, opening, teeth
    shade, the photo's own upper and lower inner lip (models/mouth.py, per frame)."""
    n = lips.shape[0]
    fs = face_size[:, None]
    half, frame = _frame(lips[:, 0], lips[:, 4])
    centre, axis, _ = frame
    upper, lower = mouth_shape.UPPER, mouth_shape.LOWER
    up_u, up_v = project(take(lips, upper), frame, half)
    lo_u, lo_v = project(take(lips, lower), frame, half)
    rest_u, rest_v = project(rest_lips, frame, half)
    own_u, own_v = project(own_lips, frame, half)
    start = torch.full_like(fs, -mouth_shape.REACH)
    stop = torch.full_like(fs, mouth_shape.REACH)
    upper_table = curve_table(up_u, up_v, start, stop)
    lower_table = curve_table(lo_u, lo_v, start, stop)
    rest_gap = torch.relu(curve_table(take(rest_u, lower), take(rest_v, lower), start, stop)
                          - curve_table(take(rest_u, upper), take(rest_v, upper), start, stop))
    own_upper = curve_table(take(own_u, upper), take(own_v, upper), start, stop)
    own_lower = curve_table(take(own_u, lower), take(own_v, lower), start, stop)
    parting = mouth_shape.PARTING * fs
    opened = torch.clamp((lower_table - upper_table - rest_gap) / parting, 0.0, 1.0)
    shade = table(mouth_shape.teeth_shade, lips).expand(n, -1)
    _, jaw_v = project(jaw_lips, frame, half)
    height, width = window_size(frame_size, MOUTH_WINDOW)
    origin = window_origin(lips.mean(1), height, width, size)
    lip_color, teeth_color = colors[1], colors[2]
    tongue = (lip_color[0] * 0.62, lip_color[1] * 0.36, lip_color[2] * 0.36)
    fields = _window_fields(origin, height, width, centre, axis, half) | dict(
        face_size=face_size, start=-mouth_shape.REACH, stop=mouth_shape.REACH,
        arch_centre=(own_u[:, 0] + own_u[:, 4]) / 2 * half,
        arch_width=mouth_shape.TEETH_HALF_WIDTH * face_size,
        lip_line=(own_v[:, 2] + own_v[:, 6]) / 2,
        upper_show=mouth_shape.UPPER_TEETH_SHOW * face_size,
        arch_dip=mouth_shape.TEETH_ARCH * face_size,
        jaw_line=jaw_v[:, 6], lower_show=mouth_shape.LOWER_TEETH_SHOW * face_size,
        gap_mid=torch.clamp(lo_v[:, 2] - up_v[:, 2], min=0.0), edge=mouth_shape.EDGE,
        lip_r=lip_color[0], lip_g=lip_color[1], lip_b=lip_color[2],
        teeth_r=teeth_color[0], teeth_g=teeth_color[1], teeth_b=teeth_color[2],
        tongue_r=tongue[0], tongue_g=tongue[1], tongue_b=tongue[2],
        shade_start=-1.0, shade_stop=1.0,
        skull_xx=skull_map[:, 0, 0], skull_xy=skull_map[:, 0, 1], skull_x=skull_map[:, 0, 2],
        skull_yx=skull_map[:, 1, 0], skull_yy=skull_map[:, 1, 1], skull_y=skull_map[:, 1, 2],
        own_keep=mouth_shape.OWN_KEEP, own_fade=mouth_shape.OWN_FADE,
        own_gap_low=mouth_shape.OWN_GAP[0], own_gap_high=mouth_shape.OWN_GAP[1],
        own_drop=mouth_shape.OWN_DROP * face_size, own_inset=mouth_shape.OWN_INSET,
        own_teeth_low=mouth_shape.OWN_TEETH[0], own_teeth_high=mouth_shape.OWN_TEETH[1],
        gum_at=mouth_shape.GUM_AT * face_size, gum_over=mouth_shape.GUM_OVER * face_size,
        gum_r=lip_color[0] * mouth_shape.GUM_TONE, gum_g=lip_color[1] * mouth_shape.GUM_TONE,
        gum_b=lip_color[2] * mouth_shape.GUM_TONE,
        curl_shadow=mouth_shape.CURL_SHADOW, curl_width=mouth_shape.CURL_WIDTH * face_size,
        teeth_shadow=mouth_shape.UPPER_TEETH_SHADOW, lip_shade=mouth_shape.LIP_SHADE * face_size,
        lower_light=mouth_shape.LOWER_TEETH_LIGHT)
    tables = torch.stack([upper_table, lower_table, opened, shade, own_upper, own_lower], 1)
    return _pack(fields, MOUTH_FIELDS, n, half), tables


def overlay_inputs(image, eye_points, expression, scale, face_width, lid_skin, lips,
                   rest_lips, own_lips, jaw_lips, colors, skull_map,
                   frame_size: int | None = None):
    """The kernel's params [N, 3, GROUP] and tables [N, TABLES, CURVE] from compose's
    arguments."""
    size = image.shape[-1]
    frame_size = frame_size or size
    gaze = take(expression, (_E["gaze_x"], _E["gaze_y"]))
    rows, tables = [], []
    for side in range(2):
        row, table = eye_inputs(eye_points[:, side * 6:(side + 1) * 6],
                                expression[:, _BLINKS[side]], gaze, lid_skin[side],
                                face_width, scale, size, frame_size)
        rows.append(row)
        tables.append(table)
    row, table = mouth_inputs(lips, rest_lips, own_lips, jaw_lips, face_width * scale, colors,
                              skull_map, size, frame_size)
    rows.append(row)
    tables.append(table)
    return torch.stack(rows, 1), torch.cat(tables, 1)


def render_fused(image, smooth_image, plate, matte, own_mouth, offset, eye_points, expression,
                 scale, face_width, lid_skin, lips, rest_lips, own_lips, jaw_lips, colors,
                 skull_map, frame_size: int | None = None, **kernel_options):
    """render.compose + rounding in one kernel: frames [N, S, S, 3] uint8 (float32 0..255
    with out_float=True). In a plugin export, the TensorRT plugin node instead.
    kernel_options go to kernels.warp_render.warp_render (out_float, block)."""
    params, tables = overlay_inputs(image, eye_points, expression, scale, face_width, lid_skin,
                                    lips, rest_lips, own_lips, jaw_lips, colors, skull_map,
                                    frame_size)
    portrait = torch.cat([image, matte, own_mouth])                        # [7, S, S]
    layers = torch.cat([smooth_image, plate])                              # [6, S, S]
    if dispatch.exporting_plugins():
        from kernels.plugin_nodes import warp_render_node

        return warp_render_node(portrait, layers, offset, params, tables)
    from kernels.warp_render import warp_render

    return warp_render(portrait, layers, offset, params, tables, **kernel_options)
