"""The inside of the mouth, drawn where the lips part.

The warp opens the lips by cutting the face between them (models.warp); this module paints
the opening, bounded by smooth curves through the moved inner-lip landmarks: a dark cavity,
the upper teeth fixed to the skull (they follow the head, not the lips), the lower teeth
fixed to the jaw, a tongue low in a wide-open mouth, and soft shadow where the lips curl
in. Shapes are in the mouth's own frame, sizes in face widths; colours come from the
portrait (lip colour for the cavity and tongue; the portrait's own teeth if it shows them,
else a shaded ivory from the skin's light: models.avatar.face_colors).

Only the part of the opening beyond the avatar's own at rest is painted, so zero motion
reproduces the portrait exactly. Over the painted opening the photo's own (a smile's teeth:
Avatar.own_mouth between Avatar.own_lips; preparation closed those lips,
models.mouth_close) stays where it lies on the skull, so a smile keeps its teeth as the jaw
drops and the new opening grows below them. Where the own opening is wide enough to keep,
all of the moved opening is painted: the warp would stretch its teeth where the lips move
over them (an 'oo' over a smile). Where the portrait shows its teeth, a raised upper lip
uncovers more of them (their top row continued up, turning to gum higher up); and while the
lower lip stays where it was, so does the foot of the portrait's own opening.
"""

import torch

from models import warp
from models.constants import constant, table, take
from models.curves import CURVE_SAMPLES, Lookup, curve_table, feature_frame, project

# Inner-lip landmarks 60..67 as positions 0..7, left to right.
UPPER = (0, 1, 2, 3, 4)         # 60 61 62 63 64
LOWER = (0, 7, 6, 5, 4)         # 60 67 66 65 64

TEETH_HALF_WIDTH = 0.19         # half the visible dental arch, face widths
UPPER_TEETH_SHOW = 0.016        # incisor edge below the relaxed lip line, face widths
LOWER_TEETH_SHOW = 0.010        # lower incisor edge above the jaw's lower lip line
TEETH_ARCH = 0.045              # how far the arch's edge recedes at its ends
TOOTH_GAPS = (0.0, 0.30, 0.54, 0.73)   # between teeth, in arch half-widths
UPPER_TEETH_SHADOW = 0.62       # upper teeth's light right under the lip (1 at LIP_SHADE below)
LIP_SHADE = 0.03                #   face widths
LOWER_TEETH_LIGHT = 0.5         # lower teeth's light (in the upper lip's and the jaw's shadow)
CURL_SHADOW = 0.5               # light at the edge of the opening, where the lips curl in
CURL_WIDTH = 0.01               #   over this many face widths
EDGE = 0.6                      # anti-aliasing width of the lip edge, pixels
PARTING = 0.008                 # face widths over which a parting of the lips comes in
REACH = 1.1                     # tables span u in [-REACH, REACH] (mouth half-widths)
# A portrait's own opening (a smile's teeth) stays on the skull as the jaw drops: its upper
# OWN_KEEP share as it is, fading out over the next OWN_FADE towards the portrait's own lower
# lip (whose inner edge must not show inside the new opening); kept in full for own openings
# of OWN_GAP[1] face widths or more, not at all under OWN_GAP[0] (a closed mouth's slit).
OWN_KEEP = 0.7
OWN_FADE = 0.2
OWN_GAP = (0.004, 0.012)
OWN_DROP = 0.01                 # ... that fade comes in fully as the lower lip drops this far
# Above the portrait's own opening a raised upper lip shows the row OWN_INSET of the way down
# it (its teeth's top), continued up; for own openings of OWN_TEETH[1] face widths or more
# (none under OWN_TEETH[0]: a slit's rows are lip, not teeth); from GUM_AT face widths above
# it that turns into gum (the lip colour x GUM_TONE) over the next GUM_OVER.
OWN_INSET = 0.1
OWN_TEETH = (0.04, 0.06)
GUM_AT = 0.015
GUM_OVER = 0.015
GUM_TONE = 0.9


def _step(x: torch.Tensor, width: float | torch.Tensor = EDGE) -> torch.Tensor:
    return torch.sigmoid(x / width)


def teeth_shade() -> torch.Tensor:
    """Brightness of the teeth across the arch, tabulated over ta in [-1, 1]: darker towards
    the back, with thin gaps between the teeth. [1, CURVE_SAMPLES]"""
    ta = torch.linspace(-1.0, 1.0, CURVE_SAMPLES)
    gaps = sum(torch.exp(-(((ta.abs() - g) / 0.02) ** 2)) for g in TOOTH_GAPS)
    return ((1.0 - 0.5 * ta * ta) * (1.0 - 0.18 * torch.clamp(gaps, 0.0, 1.0)))[None]


def mouth(points: torch.Tensor, lips: torch.Tensor, rest_lips: torch.Tensor,
          own_lips: torch.Tensor, jaw_lips: torch.Tensor, face_size: torch.Tensor,
          colors: torch.Tensor, portrait: torch.Tensor,
          skull_map: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """points [N, P, 2] output pixels; inner lips 60..67 [N, 8, 2] as moved (`lips`), at rest
    under the same head pose (`rest_lips`), as the photo shows them under that pose
    (`own_lips`: its own opening, where the upper teeth are; the rest lips unless
    preparation closed them, models.mouth_close) and moved by the jaw only (`jaw_lips`,
    where the lower teeth are); face_size [N] pixels per face width; colors [3, 3] skin,
    lips, teeth; portrait [3, S, S] the photo as it shows its mouth (Avatar.own_mouth) and
    skull_map [N, 2, 3] (output pixel -> the portrait pixel on the same point of the skull:
    models.render.skull_map). Returns colour [N, P, 3] (0..255) and coverage [N, P]."""
    fs = face_size[:, None]
    u, v, half, frame = feature_frame(points, lips[:, 0], lips[:, 4])

    # The lip curves and the opening beyond the rest's, as tables over u.
    up_u, up_v = project(take(lips, UPPER), frame, half)
    lo_u, lo_v = project(take(lips, LOWER), frame, half)
    rest_u, rest_v = project(rest_lips, frame, half)
    own_u, own_v = project(own_lips, frame, half)
    start = torch.full_like(fs, -REACH)
    stop = torch.full_like(fs, REACH)
    upper_table = curve_table(up_u, up_v, start, stop)
    lower_table = curve_table(lo_u, lo_v, start, stop)
    rest_gap = torch.relu(curve_table(take(rest_u, LOWER), take(rest_v, LOWER), start, stop)
                          - curve_table(take(rest_u, UPPER), take(rest_v, UPPER), start, stop))
    own_upper = curve_table(take(own_u, UPPER), take(own_v, UPPER), start, stop)
    own_lower = curve_table(take(own_u, LOWER), take(own_v, LOWER), start, stop)
    opened_table = torch.clamp((lower_table - upper_table - rest_gap) / (PARTING * fs), 0.0, 1.0)
    at_u = Lookup(u, start, stop)
    upper, lower, opened = at_u(upper_table), at_u(lower_table), at_u(opened_table)
    own_top, own_bottom = at_u(own_upper), at_u(own_lower)
    gap = lower - upper

    # Where the teeth are: arch coordinate ta in [-1, 1], edges from the own and jaw lips.
    arch_centre = (own_u[:, :1] + own_u[:, 4:5]) / 2 * half[:, None]
    ta = (u * half[:, None] - arch_centre) / (TEETH_HALF_WIDTH * fs)
    ta2 = ta * ta
    lip_line = (own_v[:, 2:3] + own_v[:, 6:7]) / 2
    upper_edge = lip_line + (UPPER_TEETH_SHOW - TEETH_ARCH * ta2) * fs
    _, jaw_v = project(jaw_lips, frame, half)
    lower_edge = jaw_v[:, 6:7] - (LOWER_TEETH_SHOW - 0.7 * TEETH_ARCH * ta2) * fs
    on_arch = _step(1.0 - ta.abs(), 0.08)
    upper_teeth = _step(upper_edge - v) * on_arch
    lower_teeth = _step(v - lower_edge) * on_arch
    shade = Lookup(ta, torch.full_like(fs, -1.0), torch.ones_like(fs))(table(teeth_shade, fs))

    lip_color, teeth_color = colors[1], colors[2]
    # Cavity: nearly black at the back, a little light from the lips near the edges.
    across = torch.clamp((v - upper) / torch.clamp(gap, min=1.0), 0.0, 1.0)
    back = 4.0 * across * (1.0 - across)                                   # 1 mid-opening
    light = (0.16 - 0.09 * back) * (1.0 - 0.35 * u * u)
    # Tongue: a rounded shape low in the mouth, seen when the mouth is open wide.
    gap_mid = torch.clamp(lo_v[:, 2:3] - up_v[:, 2:3], min=0.0)
    bulge = torch.sqrt(torch.clamp(1.0 - (u / 0.85) ** 2, min=0.0) + 1e-6)
    tongue_top = lower - (0.38 * gap_mid - 0.02 * fs) * bulge
    wide_open = torch.clamp((gap_mid - 0.05 * fs) / (0.06 * fs), 0.0, 1.0)
    tongue = _step(v - tongue_top, 1.2) * wide_open
    tongue_light = 0.55 + 0.45 * torch.clamp((v - tongue_top) / (0.04 * fs), 0.0, 1.0)
    # The lips curl inwards: a soft shadow along the edge of the opening.
    inset = CURL_SHADOW + (1.0 - CURL_SHADOW) * torch.clamp(
        torch.minimum(v - upper, lower - v) / (CURL_WIDTH * fs), 0.0, 1.0)

    # Compose per channel-free weights first, colours once at the end:
    # colour = cavity + tongue + lower teeth + upper teeth, each over the previous.
    w_upper = upper_teeth
    w_lower = lower_teeth * (1.0 - w_upper)
    rest = (1.0 - w_upper) * (1.0 - lower_teeth)
    w_tongue = rest * tongue
    w_cavity = rest * (1.0 - tongue)
    from_upper_lip = torch.clamp((v - upper) / (LIP_SHADE * fs), 0.0, 1.0)
    under_lip = UPPER_TEETH_SHADOW + (1.0 - UPPER_TEETH_SHADOW) * from_upper_lip
    teeth = (w_upper * under_lip + w_lower * LOWER_TEETH_LIGHT) * shade * inset
    tongue_w = w_tongue * tongue_light * inset
    cavity_w = w_cavity * light * inset
    tongue_color = lip_color * constant([0.62, 0.36, 0.36], lip_color)
    color = (teeth[..., None] * teeth_color + tongue_w[..., None] * tongue_color
             + cavity_w[..., None] * lip_color)
    # Over it all, the portrait's own opening where it lies on the skull; above it (a raised
    # upper lip) its teeth's top row continued, then gum; its foot faded as far as the lower
    # lip has dropped.
    own_gap = own_bottom - own_top
    depth = (v - own_top) / torch.clamp(own_gap, min=1.0)                 # 0 .. 1 down it
    shown = torch.clamp((own_gap / fs - OWN_GAP[0]) / (OWN_GAP[1] - OWN_GAP[0]), 0.0, 1.0)
    teeth_shown = torch.clamp((own_gap / fs - OWN_TEETH[0]) / (OWN_TEETH[1] - OWN_TEETH[0]),
                              0.0, 1.0)
    inside = _step(v - own_top)
    dropped = torch.clamp((lower - own_bottom) / (OWN_DROP * fs), 0.0, 1.0)
    kept = torch.clamp((OWN_KEEP + OWN_FADE - depth) / OWN_FADE, 0.0, 1.0)
    w_own = (inside + (1.0 - inside) * teeth_shown) * (1.0 - dropped * (1.0 - kept)) * shown
    # Painted: the opening beyond the portrait's own, and all of it where the own is kept
    # (the warp would stretch a smile's teeth where the lips move over them).
    parted = torch.clamp(gap / (PARTING * fs), 0.0, 1.0)
    coverage = _step(v - upper) * _step(lower - v) * (opened + (1.0 - opened) * shown * parted)
    lift = torch.relu(own_top + OWN_INSET * own_gap - v)                  # [N, P] pixels
    at = points + lift[..., None] * frame[2][:, None, :]
    on_skull = at @ skull_map[:, :, :2].transpose(1, 2) + skull_map[:, None, :, 2]
    own = warp.sample(portrait[None], on_skull, portrait.shape[-1]).permute(0, 2, 1)
    gum = torch.clamp(((own_top - v) / fs - GUM_AT) / GUM_OVER, 0.0, 1.0)
    own = own + (lip_color * GUM_TONE - own) * gum[..., None]
    color = color + (own - color) * w_own[..., None]
    return color, coverage
