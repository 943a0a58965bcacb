"""The renderer: avatar + motion [N, D] -> frames [N, S, S, 3] uint8.

    landmarks   expression blendshapes + exact head pose (they place the overlays)
    warp        backward map on a coarse grid (models.warp, models.head): the head turns,
                nods and moves over a still background, the expression field is inverted
                by Newton steps, the lips may part; upsampled to full resolution
    sample      one grid_sample of the portrait and the person's matte for the whole frame,
                the person put over the still background plate (models.background)
    eyes        a small window per eye, sampled again with eyelid and gaze offsets
    mouth       a window over the mouth: cavity, teeth and tongue where the lips part

Pure tensor ops, batched over frames, exportable to ONNX (GridSample, Resize, Gather,
ScatterElements): `export_onnx` writes one graph per working size that takes the avatar's
tensors as inputs, so it serves every avatar (TensorRT and onnxruntime's CUDA provider run
it); `export_onnx_split` writes it as two graphs around the whole frames' `composite`, which
the onnx engine on a CPU runs with torch (export.renderer.OnnxRenderer).

Command line:
    python -m models.render --avatar IMG --sweep jaw_open --frames 50 --out sweep.mp4
    python -m models.render --avatar IMG --demo docs/render_demo.png
"""

import argparse
import math
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from kernels import dispatch
from models import motion_space as ms
from models import warp
from models.avatar import DEFAULT_AVATAR, MAX_FACE_FRACTION, Avatar, prepare_avatar
from models.constants import constant, take
from models.curves import mix
from models.eyes import EYE, eyelid
from models.head import Pose
from models.mouth import mouth

# Overlay windows (height, width) in units of the largest face width an avatar can have;
# each eye's window sits a little above the eye's centre (the lid skin comes from above).
EYE_WINDOW = (0.26, 0.30)
EYE_WINDOW_RAISE = 0.035
MOUTH_WINDOW = (0.52, 0.68)
VACATED = (0.6, 0.9)       # what the head leaves shows what it uncovered down to 0.6 face widths
                           #   below the eyes, fading out by 0.9 (the chin; the neck below)

_EXPRESSION = [ms.index(n) for n in ms.EXPRESSION]
_E = {name: i for i, name in enumerate(ms.EXPRESSION)}
_BLINKS = [_E["blink_left"], _E["blink_right"]]


def window_size(size: int, window: tuple[float, float]) -> tuple[int, int]:
    """An overlay window's (height, width) in pixels for frames of this size (the largest
    face they can hold: MAX_FACE_FRACTION of the side)."""
    face = MAX_FACE_FRACTION * size
    return int(round(window[0] * face)), int(round(window[1] * face))


def window_origin(centre: torch.Tensor, height: int, width: int, size: int) -> torch.Tensor:
    """Top-left pixel [N, 2] of a height x width window around centre [N, 2], kept inside
    the frame."""
    extent = constant([width, height], centre)
    origin = torch.round(centre - extent / 2)
    return torch.minimum(torch.clamp(origin, min=0.0), size - extent)     # [N, 2]


def eye_window_centre(eye: torch.Tensor, face_width, scale: torch.Tensor) -> torch.Tensor:
    """Centre [N, 2] of the window of one eye [N, 6, 2]: a little above the eye's centre."""
    centre = (eye[:, EYE[0]] + eye[:, EYE[2]]) / 2
    return centre - torch.stack([torch.zeros_like(scale),
                                 EYE_WINDOW_RAISE * face_width * scale], -1)


def _window(centre: torch.Tensor, height: int, width: int, size: int):
    """An axis-aligned window of pixels around centre [N, 2], kept inside the frame.
    Returns pixel coordinates [N, P, 2] and indices into frames flattened as [N * S * S]
    (P = height * width)."""
    n = centre.shape[0]
    origin = window_origin(centre, height, width, size)                    # [N, 2]
    ys, xs = torch.meshgrid(torch.arange(height, dtype=centre.dtype, device=centre.device),
                            torch.arange(width, dtype=centre.dtype, device=centre.device),
                            indexing="ij")
    px = origin[:, 0, None, None] + xs                                     # [N, h, w]
    py = origin[:, 1, None, None] + ys
    coords = torch.stack([px, py], -1).reshape(n, -1, 2)
    frames = torch.arange(n, dtype=centre.dtype, device=centre.device)
    frame_start = frames[:, None, None] * (size * size)
    index = (frame_start + py * size + px).reshape(n, -1).to(torch.int64)
    return coords, index


def _landmarks(pose, landmarks, landmark_depth, basis, expression, own_lips):
    """Moved inner lips [N, 8, 2], eyes without the blink [N, 12, 2], inner lips at rest,
    as the photo shows them (own_lips [8, 2]: Avatar.own_lips) and moved by the jaw only
    (all three under the head pose), in output pixels."""
    moved = landmarks + torch.einsum("ne,ekc->nkc", expression, basis)     # [N, 68, 2]
    keep_open = constant([0.0 if e in _BLINKS else 1.0 for e in range(expression.shape[1])],
                         expression)                                       # [E]
    unblinked = landmarks + torch.einsum("ne,ekc->nkc", expression * keep_open, basis)
    lips = pose.forward(moved[:, 60:68], landmark_depth[None, 60:68])
    eye_points = pose.forward(unblinked[:, 36:48], landmark_depth[None, 36:48])
    rest_lips = pose.forward(landmarks[None, 60:68], landmark_depth[None, 60:68])
    own = pose.forward(own_lips[None], landmark_depth[None, 60:68])
    jaw = expression[:, _E["jaw_open"], None, None] * basis[_E["jaw_open"], 60:68]
    jaw_lips = pose.forward(landmarks[None, 60:68] + jaw, landmark_depth[None, 60:68])
    return lips, eye_points, rest_lips, own, jaw_lips


def skull_map(rest_lips: torch.Tensor, portrait_lips: torch.Tensor) -> torch.Tensor:
    """[N, 2, 3]: output pixel (x, y, 1) -> the portrait pixel that shows the same point of
    the skull, near the mouth: the similarity that takes the inner lips' corners at rest
    under the head pose (rest_lips [N, 8, 2]) to the portrait's own (portrait_lips [8, 2]).
    The upper teeth are fixed to the skull (models/mouth.py keeps a portrait's own there)."""
    a, b = rest_lips[:, 0], rest_lips[:, 4]                                # [N, 2]
    d = b - a
    e = (portrait_lips[4] - portrait_lips[0]).expand_as(d)
    norm = (d * d).sum(-1).clamp(min=1e-6)
    c = (e * d).sum(-1) / norm                                             # scale * cos
    s = (e[:, 1] * d[:, 0] - e[:, 0] * d[:, 1]) / norm                     # scale * sin
    rot = torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], 1)  # [N, 2, 2]
    shift = portrait_lips[0] - (rot @ a[..., None])[..., 0]                # [N, 2]
    return torch.cat([rot, shift[..., None]], -1)


def _coarse_map(pose, expression, landmarks, flow, flow_jacobian, depth, head_mask, face_rotation,
                pivot, face_width, size):
    """Backward map on the coarse grid: source pixel position of each node [N, Q, 2] and the
    nodes themselves [1, Q, 2]."""
    n, e, coarse = expression.shape[0], expression.shape[1], flow.shape[-1]
    steps = torch.arange(coarse, dtype=expression.dtype, device=expression.device)
    centres = (steps + 0.5) * (size / coarse) - 0.5
    gy, gx = torch.meshgrid(centres, centres, indexing="ij")
    nodes = torch.stack([gx, gy], -1).reshape(1, -1, 2)                    # [1, Q, 2]
    nodes_n = nodes.expand(n, -1, -1)
    # head pose, blended out over the background by the head mask: a node follows the head
    # where the head's pixel it is moved to is head, and, above the chin, where its own
    # pixel was head: the head has left that one, and moved, the node shows what the head
    # uncovered (left still, it was a copy of the hair beside a head turned and shifted far;
    # below the chin the neck's fade to the still torso decides alone)
    head = pose.inverse(nodes_n, depth, size)                              # [N, Q, 2]
    below = ((nodes - pivot[:2]) @ face_rotation)[..., 1] / face_width + ms.PIVOT[1]  # [1, Q]
    chin = torch.clamp((below - VACATED[0]) / (VACATED[1] - VACATED[0]), 0.0, 1.0)
    vacated = warp.sample(head_mask, nodes, size)[:, 0] * (1.0 - chin * chin * (3.0 - 2.0 * chin))
    follows = torch.maximum(warp.sample(head_mask, head, size)[:, 0], vacated)[..., None]
    targets = nodes_n + follows * (head - nodes_n)
    # expression, both layers (upper and lower face, cut between the lips) as batch 2N; the
    # layers as matmul's batch, so the avatar's fields are read in place, not copied per call
    layers = flow.shape[0]
    moved = torch.matmul(expression, flow.reshape(layers, e, -1))         # [2, N, 2*h*w]
    slopes = torch.matmul(expression, flow_jacobian.reshape(layers, e, -1))  # [2, N, 4*h*w]
    fields = torch.cat([moved.reshape(layers, n, 2, coarse, coarse),
                        slopes.reshape(layers, n, 4, coarse, coarse)], 2).transpose(0, 1)
    layered = targets.reshape(n, 1, coarse, coarse, 2).expand(-1, 2, -1, -1, -1)
    sources = warp.invert_expression(fields.reshape(2 * n, 6, coarse, coarse),
                                     layered.reshape(2 * n, coarse, coarse, 2), size)
    sources = sources.reshape(n, 2, -1, 2)                                 # [N, 2, Q, 2]
    upper = warp.choose_layer(sources[:, 0], sources[:, 1], landmarks, soft=size / coarse)
    return upper * sources[:, 0] + (1.0 - upper) * sources[:, 1], nodes


def warp_layers(layers: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """Layers [C, S, S] sampled at every output pixel plus the coarse backward displacement
    offset [N, 2, h, w] (pixels), upsampled bilinearly: [C, N, S*S]."""
    n, size = offset.shape[0], layers.shape[-1]
    fine = F.interpolate(offset * (2.0 / size), size=(size, size), mode="bilinear",
                         align_corners=False)                              # [N, 2, S, S]
    pixels = (2.0 * torch.arange(size, dtype=layers.dtype, device=layers.device) + 1.0
              ) / size - 1.0
    by, bx = torch.meshgrid(pixels, pixels, indexing="ij")
    grid = torch.stack([bx, by], -1) + fine.permute(0, 2, 3, 1)           # [N, S, S, 2]
    sampled = warp.grid_sample(layers[None], grid.reshape(1, n * size, size, 2))
    return sampled.reshape(layers.shape[0], n, size * size)               # from [1, C, N*S, S]


def composite(image, plate, matte, offset) -> torch.Tensor:
    """The whole frame: upsample the coarse backward displacement offset [N, 2, h, w]
    (pixels), sample the portrait and the person's matte once for all frames, and put the
    person over the still background plate where the matte says (away from the person the
    plate is the portrait, and the torso does not move: both exact). Returns the frames
    planar, [3, N*S*S] float (0..255)."""
    n, size = offset.shape[0], image.shape[-1]
    sampled = warp_layers(torch.cat([image, matte]), offset)              # [4, N, S*S]
    person, alpha = sampled[:3], sampled[3:]                               # [3|1, N, S*S]
    still = plate.reshape(3, 1, size * size)
    # torch.lerp: half the time of still + (person - still) * alpha in torch on a CPU
    return torch.lerp(still, person, alpha).reshape(3, n * size * size)    # planar


def compose(image, smooth_image, plate, matte, own_mouth, offset, eye_points, expression, scale,
            face_width, lid_skin, lips, rest_lips, own_lips, jaw_lips, colors, skull_map,
            frame_size: int | None = None) -> torch.Tensor:
    """Everything per output pixel, once the motion is known: the whole frame (composite),
    then the eyes and the mouth drawn over it (draw_overlays). offset [N, 2, h, w] is the
    coarse backward displacement (pixels); the rest as draw_overlays. Returns the frames
    planar, [3, N*S*S] float (0..255). kernels/warp_render.py does this in one fused pass."""
    return draw_overlays(composite(image, plate, matte, offset), image, smooth_image,
                         own_mouth, offset, eye_points, expression, scale, face_width,
                         lid_skin, lips, rest_lips, own_lips, jaw_lips, colors, skull_map,
                         frame_size)


def draw_overlays(frame, image, smooth_image, own_mouth, offset, eye_points, expression, scale,
                  face_width, lid_skin, lips, rest_lips, own_lips, jaw_lips, colors, skull_map,
                  frame_size: int | None = None) -> torch.Tensor:
    """Draw the eyes and the mouth over the whole frames `frame` [3, N*S*S] (composite's),
    in place, and return them: overlay_windows' windows (the arguments after `frame` are
    its own) painted by paint_overlays."""
    return paint_overlays(frame, *overlay_windows(
        image, smooth_image, own_mouth, offset, eye_points, expression, scale, face_width,
        lid_skin, lips, rest_lips, own_lips, jaw_lips, colors, skull_map, frame_size))


WINDOW_NAMES = ("eye_index", "eye_color", "mouth_index", "mouth_color", "mouth_coverage")


def overlay_windows(image, smooth_image, own_mouth, offset, eye_points, expression, scale,
                    face_width, lid_skin, lips, rest_lips, own_lips, jaw_lips, colors,
                    skull_map, frame_size: int | None = None) -> tuple[torch.Tensor, ...]:
    """The eyes and the mouth as windows of pixels to paint over the whole frames (in the
    order of WINDOW_NAMES): per eye, the window's pixels as indices into frames flattened as
    [N*S*S] and their colours, eye_index [2, N*P], eye_color [2, 3, N*P]; the mouth's window,
    mouth_index [N*Q], its interior's colours mouth_color [3, N*Q] (0..255) and how much of
    each pixel the interior covers, mouth_coverage [N*Q] (0..1). offset [N, 2, h, w] is the
    coarse backward displacement (pixels); eye_points [N, 12, 2], expression [N, E], scale [N]
    (head pose), lips, rest_lips, own_lips, jaw_lips [N, 8, 2] (see _landmarks), skull_map [N,
    2, 3] (output pixels -> the portrait's under the head pose alone: see skull_map); the rest
    are the avatar's fields; frame_size: the frame size the windows are sized for
    (Avatar.frame_size: a close-up's, or the frame the image is a window of; None: the
    image's own size)."""
    size = image.shape[-1]
    frame_size = frame_size or size

    # Eyes: sample again with lid and gaze offsets, darken the closing lid margin.
    height, width = window_size(frame_size, EYE_WINDOW)
    gaze = take(expression, (_E["gaze_x"], _E["gaze_y"]))
    eye_index, eye_color = [], []
    for side in range(2):
        eye = eye_points[:, side * 6:(side + 1) * 6]
        points, index = _window(eye_window_centre(eye, face_width, scale), height, width, size)
        look = eyelid(points, eye, expression[:, _BLINKS[side], None], gaze, lid_skin[side])
        # the portrait where the eye looks and the lashes hanging from a shut lid, the smooth
        # skin above the lid and below the eye: [N, 4P, 2] warped in one lookup, then two
        p = points.shape[1]
        wanted = torch.cat([points + look.shift, points + look.lashes,
                            points + look.lid_above, points + look.lid_below], 1)
        at = wanted + warp.sample(offset, wanted, size).permute(0, 2, 1)
        portrait = warp.sample(image[None], at[:, :2 * p], size)          # [N, 3, 2P]
        skin = warp.sample(smooth_image[None], at[:, 2 * p:], size)       # [N, 3, 2P]
        sharp, hanging = portrait[..., :p], portrait[..., p:]
        tone = mix(skin[..., :p], skin[..., p:], look.lid_mix[:, None])
        color = mix(sharp, tone, look.lid[:, None])
        lashes = torch.minimum(color, hanging)                             # darker only
        color = mix(color, lashes, look.hanging[:, None]) * (1.0 - look.darken[:, None])
        eye_index.append(index.reshape(-1))
        eye_color.append(color.permute(1, 0, 2).reshape(3, -1))            # from [N, 3, P]

    # Mouth: the interior where the lips part.
    height, width = window_size(frame_size, MOUTH_WINDOW)
    points, index = _window(lips.mean(1), height, width, size)
    color, coverage = mouth(points, lips, rest_lips, own_lips, jaw_lips, face_width * scale,
                            colors, own_mouth, skull_map)                  # [N, Q, 3], [N, Q]
    return (torch.stack(eye_index), torch.stack(eye_color), index.reshape(-1),
            torch.clamp(color, 0.0, 255.0).permute(2, 0, 1).reshape(3, -1),
            coverage.reshape(-1))


def paint_overlays(frame, eye_index, eye_color, mouth_index, mouth_color,
                   mouth_coverage) -> torch.Tensor:
    """Paint overlay_windows' windows over the whole frames frame [3, N*S*S], in place: the
    eyes' colours as they are, then the mouth's interior mixed over what is there by its
    coverage. Returns the frames."""
    for side in range(2):
        frame.scatter_(1, eye_index[side][None].expand(3, -1), eye_color[side])
    index3 = mouth_index[None].expand(3, -1)
    patch = frame.gather(1, index3)                                        # [3, N*Q]
    frame.scatter_(1, index3, mix(patch, mouth_color, mouth_coverage[None]))
    return frame


def to_frames(frame: torch.Tensor, n: int, size: int) -> torch.Tensor:
    """Planar frames [3, N*S*S] float (0..255), rounded in place -> [N, S, S, 3] uint8."""
    frame = frame.add_(0.5).to(torch.uint8)
    return frame.t().reshape(n, size, size, 3)


def frame_layers(image, landmarks, landmark_depth, basis, flow, flow_jacobian, depth,
                 head_mask, face_rotation, pivot, face_width, colors, lid_skin,
                 smooth_image, plate, matte, own_mouth, own_lips, motion: torch.Tensor):
    """Everything per frame (the avatar's fields, in order, then motion [N, D]): the coarse
    backward displacement offset [N, 2, h, w] and the overlays' inputs, the arguments of
    compose after the textures (image, smooth_image, plate, matte, own_mouth) and offset."""
    n, size, coarse = motion.shape[0], image.shape[-1], flow.shape[-1]
    expression = take(motion, _EXPRESSION)                                 # [N, E]
    pose = Pose(motion, face_rotation, pivot, face_width)
    lips, eye_points, rest_lips, own, jaw_lips = _landmarks(pose, landmarks, landmark_depth,
                                                            basis, expression, own_lips)
    source, nodes = _coarse_map(pose, expression, landmarks, flow, flow_jacobian, depth,
                                head_mask, face_rotation, pivot, face_width, size)

    offset = (source - nodes).reshape(n, coarse, coarse, 2).permute(0, 3, 1, 2).contiguous()
    overlays = (eye_points, expression, pose.scale, face_width, lid_skin, lips, rest_lips, own,
                jaw_lips, colors, skull_map(rest_lips, landmarks[60:68]))
    return offset, overlays


def render_tensors(image, landmarks, landmark_depth, basis, flow, flow_jacobian, depth,
                   head_mask, face_rotation, pivot, face_width, colors, lid_skin,
                   smooth_image, plate, matte, own_mouth, own_lips, motion: torch.Tensor,
                   frame_size: int | None = None) -> torch.Tensor:
    """The renderer on explicit tensors (the fields of Avatar, in order, then motion [N, D];
    frame_size as Avatar.frame_size: a close-up's, or a window's of a larger frame).
    Returns frames [N, S, S, 3] uint8."""
    n, size = motion.shape[0], image.shape[-1]
    offset, overlays = frame_layers(image, landmarks, landmark_depth, basis, flow,
                                    flow_jacobian, depth, head_mask, face_rotation, pivot,
                                    face_width, colors, lid_skin, smooth_image, plate, matte,
                                    own_mouth, own_lips, motion)
    if dispatch.fused(image):
        from models.render_fused import render_fused

        return render_fused(image, smooth_image, plate, matte, own_mouth, offset,  # uint8
                            *overlays, frame_size=frame_size)
    frame = compose(image, smooth_image, plate, matte, own_mouth, offset, *overlays,
                    frame_size=frame_size)                                 # [3, N*S*S]
    return to_frames(frame, n, size)


def render(avatar: Avatar, motion, hand: bool = True) -> torch.Tensor:
    """Frames [N, S, S, 3] uint8 for motion [N, D] (array or tensor; [D] renders one frame);
    the photo's hand in front of them (hand_in_front) unless `hand` is False."""
    motion = torch.as_tensor(np.asarray(motion, dtype=np.float32))
    if motion.ndim == 1:
        motion = motion[None]
    if motion.ndim != 2 or motion.shape[1] != ms.D:
        raise ValueError(f"motion must be [N, {ms.D}], got {tuple(motion.shape)}")
    with torch.no_grad():
        frames = render_tensors(*avatar.tensors(), motion, frame_size=avatar.frame_size)
    if hand:
        hand_in_front(avatar, frames.numpy(), motion)
    return frames


def hand_in_front(avatar: Avatar, frames: np.ndarray, motion) -> np.ndarray:
    """A hand in front of the face (Avatar.hand, as the photo shows it) drawn over rendered
    frames [N, S, S, 3] uint8 of motion [N, D], in place; returns the frames. It moves with
    the head as one flat piece at the depth of the face under its middle (so an affine map
    per frame: the head pose at three corners of its box); no expression moves it, and the
    face behind it (filled in at preparation, models.avatar.behind_hand) moves and opens its
    mouth on its own. Every engine's frames pass through here (stream.engine.Engine.render)."""
    if avatar.hand is None:
        return frames
    import cv2

    hand, size = avatar.hand.numpy(), avatar.size
    ys, xs = np.nonzero(hand[3] > 0)
    x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
    patch = hand[:, y0:y1, x0:x1].transpose(1, 2, 0) * [1.0, 1.0, 1.0, 255.0]  # [h, w, 4]
    corners = np.array([[x0, y0], [x1, y0], [x0, y1], [x1, y1]], np.float64)
    anchors = torch.from_numpy(corners[:3].astype(np.float32))[None]       # [1, 3, 2]
    middle = torch.from_numpy(np.array([[[xs.mean(), ys.mean()]]], np.float32))
    with torch.no_grad():
        depth = warp.sample(avatar.depth[:, :1], middle, size)[:, 0].expand(1, 3)
        pose = Pose(torch.as_tensor(np.asarray(motion, np.float32)).reshape(len(frames), -1),
                    avatar.face_rotation, avatar.pivot, avatar.face_width)
        moved = pose.forward(anchors, depth).numpy()                       # [N, 3, 2]
    source = np.concatenate([corners[:3], np.ones((3, 1))], 1)             # [3, 3]
    for frame, there in zip(frames, moved, strict=True):
        affine = np.linalg.solve(source, there).T                          # [2, 3] photo -> frame
        out = corners @ affine[:, :2].T + affine[:, 2]
        lo = np.clip(np.floor(out.min(0)) - 1, 0, size).astype(int)
        hi = np.clip(np.ceil(out.max(0)) + 2, 0, size).astype(int)
        if (hi <= lo).any():
            continue
        # frame pixel lo + q -> patch pixel: the inverse map, shifted to both boxes
        back = np.linalg.inv(np.vstack([affine, [0.0, 0.0, 1.0]]))[:2]
        back[:, 2] += back[:, :2] @ lo - (x0, y0)
        drawn = cv2.warpAffine(patch.astype(np.float32), back, (int(hi[0] - lo[0]),
                                                               int(hi[1] - lo[1])),
                               flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        region = frame[lo[1]:hi[1], lo[0]:hi[0]]
        below = region.astype(np.float32)
        cover = drawn[..., 3:] / 255.0
        region[...] = (below + (drawn[..., :3] - below) * cover + 0.5).astype(np.uint8)
    return frames


class Renderer(torch.nn.Module):
    """render_tensors as a module, for ONNX export: inputs are the avatar's tensors and the
    motion, so one graph serves every avatar of the same working size and frame size
    (Avatar.frame_size: larger for a close-up and for a window of a larger frame)."""

    def __init__(self, frame_size: int | None = None):
        super().__init__()
        self.frame_size = frame_size

    def forward(self, image, landmarks, landmark_depth, basis, flow, flow_jacobian, depth,
                head_mask, face_rotation, pivot, face_width, colors, lid_skin, smooth_image,
                plate, matte, own_mouth, own_lips, motion):
        return render_tensors(image, landmarks, landmark_depth, basis, flow, flow_jacobian,
                              depth, head_mask, face_rotation, pivot, face_width, colors,
                              lid_skin, smooth_image, plate, matte, own_mouth, own_lips,
                              motion, frame_size=self.frame_size)


INPUT_NAMES = ("image", "landmarks", "landmark_depth", "basis", "flow", "flow_jacobian",
               "depth", "head_mask", "face_rotation", "pivot", "face_width", "colors",
               "lid_skin", "smooth_image", "plate", "matte", "own_mouth", "own_lips", "motion")


def export_onnx(avatar: Avatar, path: str | Path) -> Path:
    """Write the renderer for avatar.size as ONNX (export.exporter: TorchScript, ~4 s at 512
    px on 2 cores); the frame count is a dynamic axis. The avatar only provides example
    inputs: the graph takes any avatar of the same working size and frame size (inputs named
    as INPUT_NAMES, output "frames" [N, S, S, 3] uint8). Not optimised here: onnxruntime and
    TensorRT optimise it when they load it. Its intermediate shapes are computed at run time;
    export.ort_cpu.shapes_by_example measures them where a rewrite needs them."""
    from export.exporter import export_graph

    # distinct copies: the exporter makes one graph input of tensors passed twice (a video
    # frame's avatar uses its crop as image, smooth_image and plate), and such a graph would
    # ignore the others for every avatar after
    example = (*(t.clone() for t in avatar.tensors()), torch.zeros(2, ms.D))
    frames = {0: ("frames", 1, 256)}
    return export_graph(Renderer(avatar.frame_size), example, path, list(INPUT_NAMES),
                        ["frames"], {"motion": frames, "frames": frames})


# The CPU renderer in three steps (export.renderer.OnnxRenderer): a graph from the avatar and
# the motion to each frame's geometry, torch's composite for the whole frames (one fused
# grid_sample: onnxruntime's CPU provider has none as fast), a graph from the geometry to the
# eyes' and the mouth's windows, which torch paints over the frames (in place: onnxruntime's
# ScatterElements copies the whole frames for each window).
GEOMETRY_NAMES = ("offset", "eye_points", "expression", "scale", "lips", "rest_lips",
                  "posed_own_lips", "jaw_lips", "skull_map")
OVERLAY_FIELDS = ("image", "smooth_image", "own_mouth", "face_width", "lid_skin", "colors")
OVERLAY_INPUTS = (*OVERLAY_FIELDS, *GEOMETRY_NAMES)     # the avatar's fields between


def frame_geometry(*avatar_and_motion) -> tuple[torch.Tensor, ...]:
    """frame_layers' per-frame outputs, in the order of GEOMETRY_NAMES (the avatar's own
    fields among the overlays' inputs are left out: the overlay graph takes them as they
    are)."""
    offset, (eye_points, expression, scale, _, _, lips, rest_lips, own, jaw_lips, _,
             skull) = frame_layers(*avatar_and_motion)
    return offset, eye_points, expression, scale, lips, rest_lips, own, jaw_lips, skull


class FrameGeometry(torch.nn.Module):
    """frame_geometry as a module, for ONNX export (inputs as INPUT_NAMES)."""

    def forward(self, *avatar_and_motion):
        return frame_geometry(*avatar_and_motion)


class OverlayWindows(torch.nn.Module):
    """overlay_windows as a module, for ONNX export (inputs as OVERLAY_INPUTS, outputs as
    WINDOW_NAMES)."""

    def __init__(self, frame_size: int | None = None):
        super().__init__()
        self.frame_size = frame_size

    def forward(self, image, smooth_image, own_mouth, face_width, lid_skin, colors, offset,
                eye_points, expression, scale, lips, rest_lips, posed_own_lips, jaw_lips,
                skull_map):
        return overlay_windows(image, smooth_image, own_mouth, offset, eye_points, expression,
                               scale, face_width, lid_skin, lips, rest_lips, posed_own_lips,
                               jaw_lips, colors, skull_map, self.frame_size)


def export_onnx_split(avatar: Avatar, geometry_path: str | Path,
                      overlays_path: str | Path) -> None:
    """Write the CPU renderer's two graphs (see GEOMETRY_NAMES): the frame geometry from
    the avatar's tensors and the motion, and the overlay windows from the geometry. Like
    export_onnx, one pair serves every avatar of the same working size and frame size."""
    from export.exporter import export_graph

    tensors = tuple(t.clone() for t in avatar.tensors())     # distinct: see export_onnx
    motion = torch.zeros(2, ms.D)
    frames = ("frames", 1, 256)
    export_graph(FrameGeometry(), (*tensors, motion), geometry_path, list(INPUT_NAMES),
                 list(GEOMETRY_NAMES), {name: {0: frames} for name in ("motion", *GEOMETRY_NAMES)})
    fields = dict(zip(INPUT_NAMES[:-1], tensors, strict=True))
    with torch.no_grad():
        geometry = frame_geometry(*tensors, motion)
    example = (*(fields[name].clone() for name in OVERLAY_FIELDS), *geometry)
    eye, lips = (("eye_pixels", 1, 1 << 30), ("mouth_pixels", 1, 1 << 30))  # frames x window
    export_graph(OverlayWindows(avatar.frame_size), example, overlays_path, list(OVERLAY_INPUTS),
                 list(WINDOW_NAMES), {**{name: {0: frames} for name in GEOMETRY_NAMES},
                                      "eye_index": {1: eye}, "eye_color": {2: eye},
                                      "mouth_index": {0: lips}, "mouth_color": {1: lips},
                                      "mouth_coverage": {0: lips}})


# ---------------------------------------------------------------------------------------------
# Command line: parameter sweeps and the contact sheet
# ---------------------------------------------------------------------------------------------

def sweep(name: str, frames: int) -> np.ndarray:
    """Motion [frames, D]: one parameter 0 -> its maximum -> 0 (half a sine), the rest 0."""
    motion = ms.neutral(frames)
    t = np.linspace(0.0, 1.0, frames)
    motion[:, ms.index(name)] = ms.HIGH[ms.index(name)] * np.sin(math.pi * t)
    return motion


def write_video(frames: np.ndarray, path: Path, fps: int = 25) -> None:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "18"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def render_batched(avatar: Avatar, motion: np.ndarray, batch: int = 16) -> np.ndarray:
    return np.concatenate([render(avatar, motion[i:i + batch]).numpy()
                           for i in range(0, len(motion), batch)])


def contact_sheet(avatar: Avatar, columns: int = 5, tile: int = 168, groups: int = 2) -> np.ndarray:
    """Every parameter at `columns` values evenly over its documented range (one row each,
    the rows split into `groups` side by side), each tile the head region of the frame.
    Returns an RGB image [H, W, 3] uint8."""
    from PIL import Image, ImageDraw, ImageFont

    size = avatar.size
    values = np.stack([np.linspace(p.low, p.high, columns) for p in ms.PARAMETERS])  # [D, C]
    motion = np.zeros((ms.D, columns, ms.D), dtype=np.float32)
    for p in range(ms.D):
        motion[p, :, p] = values[p]
    frames = render_batched(avatar, motion.reshape(-1, ms.D)).reshape(ms.D, columns, size, size, 3)
    # the head region: a square of 2.3 face widths around the face
    centre = avatar.landmarks.numpy().mean(0)
    half = int(min(1.15 * float(avatar.face_width), size / 2))
    x0 = int(np.clip(centre[0] - half, 0, size - 2 * half))
    y0 = int(np.clip(centre[1] - 1.1 * half, 0, size - 2 * half))

    label, header, gap = 150, 30, 16
    rows = -(-ms.D // groups)
    group_width = label + columns * tile
    sheet = Image.new("RGB", (groups * group_width + (groups - 1) * gap, header + rows * tile),
                      "white")
    draw = ImageDraw.Draw(sheet)
    font, small = ImageFont.load_default(size=15), ImageFont.load_default(size=12)
    for p, param in enumerate(ms.PARAMETERS):
        left = (p // rows) * (group_width + gap)
        top = header + (p % rows) * tile
        draw.text((left + 6, top + tile // 2 - 18), param.name, fill="black", font=font)
        draw.text((left + 6, top + tile // 2 + 2), f"{param.low:g} .. {param.high:g} {param.unit}",
                  fill="gray", font=small)
        for c in range(columns):
            crop = frames[p, c, y0:y0 + 2 * half, x0:x0 + 2 * half]
            picture = Image.fromarray(crop).resize((tile, tile), Image.LANCZOS)
            sheet.paste(picture, (left + label + c * tile, top))
            draw.text((left + label + c * tile + 4, top + tile - 17), f"{values[p, c]:+g}",
                      fill="white", font=small, stroke_width=2, stroke_fill="black")
    draw.text((6, 6), "Each row: one motion parameter over its documented range, all others "
              "zero (python -m models.render --demo)", fill="black", font=font)
    return np.asarray(sheet)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.render", description=__doc__.split(
        "\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--avatar", default=str(DEFAULT_AVATAR), help="portrait photo")
    parser.add_argument("--size", type=int, default=512, choices=(512, 256))
    parser.add_argument("--sweep", metavar="PARAM", help=f"one of: {', '.join(ms.NAMES)}")
    parser.add_argument("--frames", type=int, default=50)
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--out", help="output video (.mp4) for --sweep")
    parser.add_argument("--demo", metavar="OUT_PNG", help="write a contact sheet of all parameters")
    args = parser.parse_args(argv)

    def show_warning(message, category, *rest, **kwargs):
        print(f"warning: {message}", file=sys.stderr)

    warnings.showwarning = show_warning
    try:
        if not args.sweep and not args.demo:
            raise UsageError(
                "nothing to do: give --sweep PARAM --out OUT.mp4 and/or --demo OUT.png")
        if args.sweep:
            if args.sweep not in ms.NAMES:
                raise UsageError(f"unknown parameter {args.sweep!r}; known: {', '.join(ms.NAMES)}")
            if not args.out:
                raise UsageError("--sweep needs --out OUT.mp4")
            if args.frames < 2:
                raise UsageError("--frames must be at least 2")
        avatar = prepare_avatar(args.avatar, args.size)
        if args.sweep:
            frames = render_batched(avatar, sweep(args.sweep, args.frames))
            write_video(frames, Path(args.out), args.fps)
            print(f"wrote {args.out}: {len(frames)} frames of {args.sweep}")
        if args.demo:
            from PIL import Image

            Image.fromarray(contact_sheet(avatar)).save(args.demo, optimize=True)
            print(f"wrote {args.demo}")
    except (ValueError, OSError) as e:   # PortraitError is a ValueError
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


class UsageError(ValueError):
    pass


if __name__ == "__main__":
    sys.exit(main())
