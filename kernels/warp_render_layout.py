"""The inputs of the fused warp-render kernel (kernels/warp_render.py), without triton:
models/render_fused.py packs them, kernels/plugin_nodes.py and kernels/trt_plugins.py name
them.

    params  [N, 3, GROUP]     per frame, one row per overlay: eye 0, eye 1 (drawn over eye 0),
                              mouth; the row's first fields are EYE_FIELDS or MOUTH_FIELDS
    tables  [N, TABLES, CURVE] per frame, curves tabulated over u: eye 0 upper and lower lid,
                              eye 1 upper and lower lid, the mouth's upper lip, lower lip,
                              opening (0..1), the teeth's shade across the arch, and its
                              upper and lower lip at rest (the portrait's own opening)
"""

CURVE = 33          # samples per curve table (models/curves.py CURVE_SAMPLES)
GROUP = 56          # parameters per overlay, padded
TABLES = 10
OVERLAYS = 3

WINDOW = ("origin_x", "origin_y", "width", "height",         # the overlay's pixel window
          "centre_x", "centre_y", "axis_x", "axis_y", "half")  # its feature frame
EYE_FIELDS = WINDOW + (
    "top_start", "top_stop", "bottom_start", "bottom_stop",   # spans of the lid tables
    "close_upper", "close_lower",      # blink * MEET, blink * (1 - MEET)
    "overshoot", "skin", "skin_below", "lid_below",           # pixels
    "gaze_along", "gaze_down",         # iris travel, pixels
    "lash", "lash_dark", "open_full",  # lash band width, its darkness, a full opening
    "edge", "lid_ramp", "lid_max_closed", "lid_mix",          # models/eyes.py constants
    "lash_band", "band_fade",          # pixels; a constant
    "closing")                         # 0 open .. 1 shut: the lashes fold and hang
MOUTH_FIELDS = WINDOW + (
    "face_size", "start", "stop",      # pixels per face width; span of the lip tables
    "arch_centre", "arch_width", "lip_line", "upper_show", "arch_dip", "jaw_line",
    "lower_show", "gap_mid", "edge",
    "lip_r", "lip_g", "lip_b", "teeth_r", "teeth_g", "teeth_b",
    "tongue_r", "tongue_g", "tongue_b", "shade_start", "shade_stop",
    "skull_xx", "skull_xy", "skull_x", "skull_yx", "skull_yy", "skull_y",  # render.skull_map
    "own_keep", "own_fade", "own_gap_low", "own_gap_high",    # models/mouth.py constants
    "own_drop", "own_inset",           # pixels; a constant
    "own_teeth_low", "own_teeth_high", "gum_at", "gum_over",  # constants; pixels
    "gum_r", "gum_g", "gum_b",         # the gum's colour
    "curl_shadow", "curl_width",       # the lips' inward curl: a constant; pixels
    "teeth_shadow", "lip_shade",       # upper teeth right under the lip: a constant; pixels
    "lower_light")                     # a constant
assert len(EYE_FIELDS) <= GROUP and len(MOUTH_FIELDS) <= GROUP
