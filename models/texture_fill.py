"""Texture completion: a hole in an image filled with patches of the image itself.

The push-pull fill (models.background.fill) gives a hole the smooth mean of what is around
it; behind a head that turns, that is a blurred blob in a flag, a wall's grain or a
bookshelf. This continues the texture instead, by the method of Wexler, Shechtman and Irani
("Space-time completion of video", 2007), with Barnes et al.'s PatchMatch (2009) finding the
patches:

    every patch that touches the hole gets a nearest patch lying wholly in the known part
    (PatchMatch: neighbours' matches propagated, then a random search at shrinking radii;
    "nearest" adds a cost for taking it from far away, LOCALITY);
    every hole pixel becomes the weighted mean of what the patches covering it point to
    (weight exp(-d / 2 h), d a patch's mean squared difference, h its 75th percentile);
    the two steps repeated, coarse to fine: a pyramid of halvings, the push-pull fill the
    guess at the coarsest level, each finer level started from the coarser level's matches.

Prepared once per avatar (numba, one thread; compiled at setup: compile_now); the same seed
gives the same fill.
"""

import numpy as np
from numba import njit

from models.background import fill

RADIUS = 3                 # patches of 7 x 7 pixels
COARSEST = 64              # the pyramid halves the image until its shorter side is below 2x this
ROUNDS = (4, 3, 2, 1)      # match-and-vote rounds: the coarsest level, the next, those between,
                           #   the finest (its matches come from the level below, nearly right)
PASSES = 2                 # PatchMatch passes (forward, backward) per round
SEARCH = 16                # above the coarsest level the random search starts at 1/16 of the side
LOCALITY = 20000.0         # a patch one image side away costs this much (mean squared grey
                           #   levels), so the hole takes the texture beside it (the flag next to
                           #   her ear, not the sky beyond her head) unless a far one fits better
SPREAD = 75                # percentile of the patch distances that sets the votes' weights


def complete(image: np.ndarray, known: np.ndarray, seed: int = 0) -> np.ndarray:
    """The image [H, W, C] (float, 0..255) with its unknown pixels (`known` [H, W] False)
    filled with its own texture: [H, W, C] float32; known pixels are returned unchanged.
    Where too little is known to take a patch from, the push-pull fill is returned."""
    image = np.asarray(image, np.float32)
    known = np.asarray(known, bool)
    if known.all():
        return image.copy()
    levels = [(image, known)]                                # finest first
    while min(levels[-1][1].shape) >= 2 * COARSEST:
        levels.append(_halve(*levels[-1]))
    sources = [_sources(k) for _, k in levels]
    if not all(s.any() for s in sources):
        return fill(image, known).astype(np.float32)
    rng = np.random.default_rng(seed)

    coarsest = len(levels) - 1
    picture, known_here = levels[coarsest]
    estimate = np.where(known_here[..., None], picture, fill(picture, known_here))
    estimate = estimate.astype(np.float32)
    matches = _random_matches(known_here.shape, sources[coarsest], rng)
    for depth in range(coarsest, -1, -1):
        picture, known_here = levels[depth]
        hole, targets = ~known_here, _targets(~known_here)
        search = max(known_here.shape)
        if depth < coarsest:                                 # start from the coarser matches
            matches = _finer_matches(matches, known_here.shape, sources[depth], rng)
            estimate = picture.copy()
            _vote(estimate, hole, matches, np.zeros(hole.shape, np.float32), targets, RADIUS,
                  1.0)
            search //= SEARCH
        distance = np.zeros(hole.shape, np.float32)
        _distances(estimate, matches, distance, targets, RADIUS, LOCALITY)
        rounds = ROUNDS[-1] if depth == 0 else ROUNDS[min(coarsest - depth, len(ROUNDS) - 2)]
        for _ in range(rounds):
            _patchmatch(estimate, matches, distance, sources[depth], targets, RADIUS, PASSES,
                        int(rng.integers(2**31)), LOCALITY, search)
            spread = max(float(np.percentile(distance[targets], SPREAD)), 1e-3)
            _vote(estimate, hole, matches, distance, targets, RADIUS, spread)
    return np.where(known[..., None], image, estimate).astype(np.float32)


def compile_now() -> None:
    """Compiles the fill's numba functions (cached beside this module), so that the first
    avatar a server prepares does not wait the few seconds it takes; setup calls it."""
    known = np.zeros((64, 64), bool)
    known[:, :40] = True
    complete(np.zeros((64, 64, 3), np.float32), known)


def _halve(image: np.ndarray, known: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """2x2 means of the known pixels [H/2, W/2, C]; a pixel is known where all four were."""
    h, w = known.shape[0] // 2 * 2, known.shape[1] // 2 * 2
    weight = known[:h, :w].astype(np.float32)
    values = (image[:h, :w] * weight[..., None]).reshape(h // 2, 2, w // 2, 2, -1).sum((1, 3))
    count = weight.reshape(h // 2, 2, w // 2, 2).sum((1, 3))
    small = values / np.maximum(count, 1.0)[..., None]
    return small.astype(np.float32), count == 4


def _sources(known: np.ndarray) -> np.ndarray:
    """Patch centres [H, W] bool whose whole patch is known and inside the image."""
    from scipy import ndimage

    whole = ndimage.binary_erosion(known, np.ones((2 * RADIUS + 1,) * 2, bool),
                                   border_value=0)
    return whole & _whole_patch(known.shape)


def _targets(hole: np.ndarray) -> np.ndarray:
    """Patch centres [H, W] bool inside the image whose patch touches the hole."""
    from scipy import ndimage

    near = ndimage.binary_dilation(hole, np.ones((2 * RADIUS + 1,) * 2, bool))
    return near & _whole_patch(hole.shape)


def _whole_patch(shape: tuple[int, int]) -> np.ndarray:
    """Pixels [H, W] bool whose patch lies wholly inside the image."""
    inside = np.zeros(shape, bool)
    inside[RADIUS:-RADIUS, RADIUS:-RADIUS] = True
    return inside


def _random_matches(shape: tuple[int, int], sources: np.ndarray,
                    rng: np.random.Generator) -> np.ndarray:
    """Every pixel matched to a random source centre: [H, W, 2] int64 (row, column)."""
    ys, xs = np.nonzero(sources)
    pick = rng.integers(len(ys), size=shape)
    return np.stack([ys[pick], xs[pick]], -1).astype(np.int64)


def _finer_matches(coarse: np.ndarray, shape: tuple[int, int], sources: np.ndarray,
                   rng: np.random.Generator) -> np.ndarray:
    """A coarser level's matches [h, w, 2] brought to this level [H, W, 2]: a pixel's match
    is its coarse pixel's, doubled, at the same place within the 2x2 block; where that is no
    source here, a random source."""
    rows = np.minimum(np.arange(shape[0]) // 2, coarse.shape[0] - 1)
    cols = np.minimum(np.arange(shape[1]) // 2, coarse.shape[1] - 1)
    up = coarse[rows][:, cols] * 2                                       # [H, W, 2]
    up[..., 0] += (np.arange(shape[0]) % 2)[:, None]
    up[..., 1] += (np.arange(shape[1]) % 2)[None, :]
    up[..., 0] = np.clip(up[..., 0], 0, shape[0] - 1)
    up[..., 1] = np.clip(up[..., 1], 0, shape[1] - 1)
    fine = _random_matches(shape, sources, rng)
    valid = sources[up[..., 0], up[..., 1]]
    return np.where(valid[..., None], up, fine).astype(np.int64)


@njit(cache=True)
def _patch_distance(image, ty, tx, sy, sx, radius, limit):
    """Mean squared difference of the patches centred at (ty, tx) and (sy, sx); stops early
    once it is past `limit` (returns a value above it)."""
    total = 0.0
    count = (2 * radius + 1) ** 2 * image.shape[2]
    bound = limit * count
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            for c in range(image.shape[2]):
                d = image[ty + dy, tx + dx, c] - image[sy + dy, sx + dx, c]
                total += d * d
        if total > bound:
            return total / count
    return total / count


@njit(cache=True)
def _distances(image, matches, distance, targets, radius, locality):
    """Each target's distance to its match, in place."""
    for y in range(image.shape[0]):
        for x in range(image.shape[1]):
            if targets[y, x]:
                sy, sx = matches[y, x, 0], matches[y, x, 1]
                distance[y, x] = (_patch_distance(image, y, x, sy, sx, radius, np.inf)
                                  + _far(image, y, x, sy, sx, locality))


@njit(cache=True)
def _far(image, y, x, sy, sx, locality):
    """The cost of taking a patch from far away: `locality` per image side, squared."""
    side = max(image.shape[0], image.shape[1])
    return locality * ((y - sy) ** 2 + (x - sx) ** 2) / (side * side)


@njit(cache=True)
def _try(image, matches, distance, sources, y, x, sy, sx, radius, locality):
    """Match (y, x) to (sy, sx) if that is a source and nearer than its match."""
    if sy < 0 or sx < 0 or sy >= image.shape[0] or sx >= image.shape[1]:
        return
    if not sources[sy, sx] or (sy == matches[y, x, 0] and sx == matches[y, x, 1]):
        return
    far = _far(image, y, x, sy, sx, locality)
    if far >= distance[y, x]:
        return
    d = _patch_distance(image, y, x, sy, sx, radius, distance[y, x] - far) + far
    if d < distance[y, x]:
        distance[y, x] = d
        matches[y, x, 0] = sy
        matches[y, x, 1] = sx


@njit(cache=True)
def _patchmatch(image, matches, distance, sources, targets, radius, passes, seed, locality, search):
    """PatchMatch passes over the targets, in place: each takes its neighbours' matches,
    shifted (left and above going forward, right and below going back), then tries random
    places around its match at radii halving from the image's size."""
    np.random.seed(seed)
    h, w = image.shape[0], image.shape[1]
    for p in range(passes):
        step = 1 if p % 2 == 0 else -1
        for i in range(h):
            y = i if step == 1 else h - 1 - i
            for j in range(w):
                x = j if step == 1 else w - 1 - j
                if not targets[y, x]:
                    continue
                ny, nx = y - step, x - step
                if 0 <= nx < w:
                    _try(image, matches, distance, sources, y, x,
                         matches[y, nx, 0], matches[y, nx, 1] + step, radius, locality)
                if 0 <= ny < h:
                    _try(image, matches, distance, sources, y, x,
                         matches[ny, x, 0] + step, matches[ny, x, 1], radius, locality)
                reach = search
                while reach >= 1:
                    sy = matches[y, x, 0] + np.random.randint(-reach, reach + 1)
                    sx = matches[y, x, 1] + np.random.randint(-reach, reach + 1)
                    _try(image, matches, distance, sources, y, x, sy, sx, radius, locality)
                    reach //= 2


@njit(cache=True)
def _vote(image, hole, matches, distance, targets, radius, spread):
    """Each hole pixel set, in place, to the mean of what the target patches covering it
    point to, weighted by exp(-distance / 2 spread)."""
    h, w, channels = image.shape
    total = np.zeros((h, w, channels), np.float32)
    weight = np.zeros((h, w), np.float32)
    for y in range(h):
        for x in range(w):
            if not targets[y, x]:
                continue
            sy, sx = matches[y, x, 0], matches[y, x, 1]
            wt = np.exp(-min(distance[y, x] / (2.0 * spread), 50.0))
            for dy in range(-radius, radius + 1):
                for dx in range(-radius, radius + 1):
                    if hole[y + dy, x + dx]:
                        weight[y + dy, x + dx] += wt
                        for c in range(channels):
                            total[y + dy, x + dx, c] += wt * image[sy + dy, sx + dx, c]
    for y in range(h):
        for x in range(w):
            if hole[y, x] and weight[y, x] > 0:
                for c in range(channels):
                    image[y, x, c] = total[y, x, c] / weight[y, x]
