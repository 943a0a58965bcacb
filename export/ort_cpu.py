"""Rewrites of an exported graph for onnxruntime's CPU provider (used for the renderer).

Two kinds of node are slow on onnxruntime's CPU provider, and the renderer is full of both:

    GridSample      a scalar loop per output value, ~5x slower than torch's grid_sample
    broadcasting    an element-wise op, Slice or Gather whose innermost output axis is tiny
                    ([N, P, 2] * [1, 1, 2], [N, P, 1] - scalar, x[..., 0]): the kernels loop
                    over spans of the innermost axis at ~50 ns a span, so a tensor of
                    coordinate pairs costs 50x what the same values cost laid out flat

`rewrite_for_cpu(fold_constants(path))` changes the graph, not what it computes (it needs the
graph's shapes: `shapes_by_example` measures them where the exporter left them unknown):

    planar layout   a tensor whose trailing axes are small ([N, P, 2]) is carried with those
                    axes moved to the front ([2, N, P]) through chains of element-wise ops,
                    slices, gathers, concats, splits and reductions; a Transpose back is
                    inserted only where another op needs the original layout
    GridSample      bilinear sampling (border padding, align_corners=0) as one GatherElements
                    on the flattened image (4 corners x C channels) and three lerps; where
                    the lookups are few beside the image's pixels, its channels are not split
                    apart (a copy of the whole image per call) but indexed as one table

TensorRT gets the graph as exported: GridSample is a native layer there.
"""

from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

SMALL = 16                 # a trailing axis at most this long is "small"

# element-wise ops with numpy broadcasting over all inputs (Clip: min/max are scalars)
BROADCAST = {"Add", "Sub", "Mul", "Div", "Pow", "Min", "Max", "Mod", "Where", "Equal", "Less",
             "Greater", "LessOrEqual", "GreaterOrEqual", "And", "Or", "Xor", "PRelu"}
UNARY = {"Neg", "Abs", "Floor", "Ceil", "Round", "Sqrt", "Exp", "Log", "Sin", "Cos", "Tan",
         "Asin", "Acos", "Atan", "Sinh", "Cosh", "Tanh", "Sigmoid", "Relu", "Reciprocal",
         "Sign", "Erf", "Not", "IsNaN", "IsInf", "Identity", "Cast", "Clip", "Softplus",
         "LeakyRelu", "Elu", "HardSigmoid"}
REDUCE = {"ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL2",
          "ReduceL1", "ReduceSumSquare"}


def per_frame(dim) -> int:
    """How long an axis is for one frame: its length, k for "k*frames" (shapes_by_example's
    name), 1 for "frames"; 0 where unknown."""
    if isinstance(dim, int):
        return dim
    if dim == "frames":
        return 1
    k, _, axis = str(dim).partition("*")
    return int(k) if axis == "frames" and k.isdigit() else 0


def inverse(perm) -> tuple[int, ...]:
    out = [0] * len(perm)
    for j, p in enumerate(perm):
        out[p] = j
    return tuple(out)


class Rewriter:
    def __init__(self, model: onnx.ModelProto):
        self.model = model
        graph = onnx.shape_inference.infer_shapes(model).graph    # shapes of every value
        self.shapes: dict[str, list] = {}      # name -> dims (int, or str when symbolic)
        for v in [*graph.input, *graph.value_info, *graph.output]:
            if v.type.tensor_type.HasField("shape"):
                self.shapes[v.name] = [d.dim_value if d.HasField("dim_value") else
                                       (d.dim_param or "?") for d in v.type.tensor_type.shape.dim]
        self.consts: dict[str, np.ndarray] = {}
        for t in graph.initializer:
            self.consts[t.name] = numpy_helper.to_array(t)
            self.shapes[t.name] = list(t.dims)
        for node in model.graph.node:
            if node.op_type == "Constant" and node.attribute[0].name == "value":
                value = numpy_helper.to_array(node.attribute[0].t)
                self.consts[node.output[0]] = value
                self.shapes[node.output[0]] = list(value.shape)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.planar: dict[str, tuple[str, tuple]] = {}   # name -> (planar name, perm)
        self.pending: set[str] = set()                   # only the planar version exists
        self.transposed: dict[tuple, str] = {}           # (name, perm) -> planar name
        self.count = 0

    # -- helpers ------------------------------------------------------------------------

    def fresh(self, base: str) -> str:
        self.count += 1
        return f"{base}__cpu{self.count}"

    def const(self, value, base="c") -> str:
        name = self.fresh(base)
        self.initializers.append(numpy_helper.from_array(np.asarray(value), name))
        self.consts[name] = np.asarray(value)
        return name

    def emit(self, op, inputs, outputs=None, **attrs) -> list[str]:
        outputs = outputs or [self.fresh(op.lower())]
        self.nodes.append(helper.make_node(op, list(inputs), list(outputs), **attrs))
        return outputs

    def rank(self, name):
        shape = self.shapes.get(name)
        return None if shape is None else len(shape)

    def is_unit(self, name) -> bool:
        """Holds one value: broadcasts the same in any layout."""
        shape = self.shapes.get(name)
        return shape is not None and all(d == 1 for d in shape)

    @staticmethod
    def big(dim) -> bool:
        """Long enough to be the innermost axis: a static length over SMALL, or a symbolic
        product (n*S); a bare symbol is the frame count, which may be 1."""
        if isinstance(dim, int):
            return dim > SMALL
        factor = dim.split("*")[0]
        return "*" in dim and (not factor.isdigit() or int(factor) > SMALL)

    def lays_out_well(self, name, perm) -> bool:
        shape = self.shapes.get(name)
        return shape is not None and self.big(shape[perm[-1]])

    def trailing_perm(self, name):
        """Perm moving the small trailing axes of `name` to the front, when that leaves a
        long innermost axis."""
        shape = self.shapes.get(name)
        if not shape:
            return None
        k = 0
        while k < len(shape) and isinstance(shape[-1 - k], int) and shape[-1 - k] <= SMALL:
            k += 1
        r = len(shape)
        if k == 0 or k == r:
            return None
        perm = tuple(range(r - k, r)) + tuple(range(r - k))
        return perm if self.lays_out_well(name, perm) else None

    def original(self, name: str) -> str:
        """`name` in its original layout (a Transpose back if only the planar one exists)."""
        if name in self.pending:
            pname, perm = self.planar[name]
            self.emit("Transpose", [pname], [name], perm=list(inverse(perm)))
            self.pending.discard(name)
        return name

    def to_planar(self, name: str, perm: tuple) -> str:
        """`name` broadcast-padded to len(perm) axes and transposed by perm."""
        if not name or self.is_unit(name):
            return name
        if name in self.planar and self.planar[name][1] == perm:
            return self.planar[name][0]
        if (name, perm) in self.transposed:
            return self.transposed[(name, perm)]
        r = self.rank(name)
        if r is None:
            raise KeyError(name)
        if name in self.planar and r == len(perm):     # from one planar layout to another
            pname, q = self.planar[name]
            (out,) = self.emit("Transpose", [pname], perm=[q.index(p) for p in perm])
            self.transposed[(name, perm)] = out
            return out
        if name in self.consts:
            value = self.consts[name].reshape((1,) * (len(perm) - r) + self.consts[name].shape)
            out = self.const(np.ascontiguousarray(value.transpose(perm)), name)
        else:
            source = self.original(name)
            if r < len(perm):
                axes = self.const(np.arange(len(perm) - r, dtype=np.int64), "axes")
                (source,) = self.emit("Unsqueeze", [source, axes])
            (out,) = self.emit("Transpose", [source], perm=list(perm))
        self.transposed[(name, perm)] = out
        return out

    def set_planar(self, name: str, pname: str, perm: tuple) -> None:
        self.planar[name] = (pname, perm)
        self.pending.add(name)

    def attr(self, node, key, default=None):
        for a in node.attribute:
            if a.name == key:
                return helper.get_attribute_value(a)
        return default

    def axes_input(self, node, index):
        if len(node.input) > index and node.input[index]:
            if node.input[index] not in self.consts:
                return None
            return [int(a) for a in np.atleast_1d(self.consts[node.input[index]])]
        return []

    # -- node handlers ----------------------------------------------------------------

    def elementwise(self, node) -> bool:
        out = node.output[0]
        r = self.rank(out)
        if r is None:
            return False
        data = [node.input[0]] if node.op_type in UNARY else list(node.input)
        if any(self.rank(i) is None for i in data):
            return False
        # the layout of a planar input, preferring one shaped like the output
        planar = sorted((self.shapes.get(i) != self.shapes[out], self.planar[i][1])
                        for i in data if i in self.planar and self.rank(i) == r)
        perm = planar[0][1] if planar else None
        if perm is None or not self.lays_out_well(out, perm):
            if not planar and (node.op_type not in BROADCAST or all(
                    self.shapes.get(i) == self.shapes[out] for i in data)):
                return False                    # nothing planar, no broadcasting: fast
            perm = self.trailing_perm(out)
            if perm is None:
                return False
        inputs = [self.to_planar(i, perm) for i in data] + list(node.input[len(data):])
        pname = self.fresh(out)
        self.emit(node.op_type, inputs, [pname],
                  **{a.name: helper.get_attribute_value(a) for a in node.attribute})
        self.set_planar(out, pname, perm)
        return True

    def planar_input(self, node, axis_of):
        """The data input's planar form, going planar first when the op works on a small
        trailing axis of a non-planar tensor. axis_of: the op's axes (original numbering)."""
        data = node.input[0]
        if data in self.planar:
            return self.planar[data]
        perm = self.trailing_perm(data)
        if perm is None or not axis_of:
            return None
        r = self.rank(data)
        small = set(perm[:r - perm[-1] - 1])              # the trailing axes moved first
        if not all(a % r in small for a in axis_of):
            return None
        return self.to_planar(data, perm), perm

    def slice(self, node) -> bool:
        axes = self.axes_input(node, 3)
        r = self.rank(node.input[0])
        if axes is None or r is None:
            return False
        if not axes:
            axes = list(range(len(self.consts.get(node.input[1], [0] * r))))
        found = self.planar_input(node, axes)
        if found is None:
            return False
        pname, perm = found
        new_axes = self.const(np.array([perm.index(a % r) for a in axes], np.int64), "axes")
        inputs = [pname, node.input[1], node.input[2], new_axes] + list(node.input[4:])
        out = self.fresh(node.output[0])
        self.emit("Slice", inputs, [out])
        self.set_planar(node.output[0], out, perm)
        return True

    def gather(self, node) -> bool:
        r = self.rank(node.input[0])
        q = self.rank(node.input[1])
        if r is None or q not in (0, 1):
            return False
        axis = self.attr(node, "axis", 0) % r
        found = self.planar_input(node, [axis])
        if found is None:
            return False
        pname, perm = found
        out = self.fresh(node.output[0])
        self.emit("Gather", [pname, node.input[1]], [out], axis=perm.index(axis))
        if q == 0:
            perm = tuple(p - (p > axis) for p in perm if p != axis)
        self.set_planar(node.output[0], out, perm)
        return True

    def concat(self, node) -> bool:
        r = self.rank(node.output[0])
        perms = {self.planar[i][1] for i in node.input if i in self.planar}
        if r is None or len(perms) != 1 or any(self.rank(i) != r for i in node.input):
            return False
        perm = perms.pop()
        inputs = [self.to_planar(i, perm) for i in node.input]
        out = self.fresh(node.output[0])
        self.emit("Concat", inputs, [out], axis=perm.index(self.attr(node, "axis") % r))
        self.set_planar(node.output[0], out, perm)
        return True

    def split(self, node) -> bool:
        r = self.rank(node.input[0])
        if r is None:
            return False
        axis = self.attr(node, "axis", 0) % r
        found = self.planar_input(node, [axis])
        if found is None:
            return False
        pname, perm = found
        outs = [self.fresh(o) for o in node.output]
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        attrs["axis"] = perm.index(axis)
        self.emit("Split", [pname] + list(node.input[1:]), outs, **attrs)
        for o, p in zip(node.output, outs, strict=True):
            self.set_planar(o, p, perm)
        return True

    def squeeze(self, node) -> bool:
        data = node.input[0]
        axes = self.axes_input(node, 1)
        r = self.rank(data)
        if data not in self.planar or not axes or r is None:
            return False
        pname, perm = self.planar[data]
        axes = sorted(a % r for a in axes)
        new_axes = self.const(np.array([perm.index(a) for a in axes], np.int64), "axes")
        out = self.fresh(node.output[0])
        self.emit("Squeeze", [pname, new_axes], [out])
        kept = [p for p in perm if p not in axes]
        self.set_planar(node.output[0], out, tuple(p - sum(a < p for a in axes) for p in kept))
        return True

    def unsqueeze(self, node) -> bool:
        data = node.input[0]
        axes = self.axes_input(node, 1)
        r_out = self.rank(node.output[0])
        if data not in self.planar or not axes or r_out is None:
            return False
        pname, perm = self.planar[data]
        new = sorted(a % r_out for a in axes)
        old = [o for o in range(r_out) if o not in new]            # old axis i -> old[i]
        front = self.const(np.arange(len(new), dtype=np.int64), "axes")
        out = self.fresh(node.output[0])
        self.emit("Unsqueeze", [pname, front], [out])
        self.set_planar(node.output[0], out, tuple(new) + tuple(old[p] for p in perm))
        return True

    def reduce(self, node) -> bool:
        data = node.input[0]
        axes = self.axes_input(node, 1)
        r = self.rank(data)
        if data not in self.planar or not axes or r is None:
            return False
        pname, perm = self.planar[data]
        axes = sorted(a % r for a in axes)
        new_axes = self.const(np.array([perm.index(a) for a in axes], np.int64), "axes")
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        out = self.fresh(node.output[0])
        self.emit(node.op_type, [pname, new_axes], [out], **attrs)
        if attrs.get("keepdims", 1) == 0:
            kept = [p for p in perm if p not in axes]
            perm = tuple(p - sum(a < p for a in axes) for p in kept)
        self.set_planar(node.output[0], out, perm)
        return True

    def transpose(self, node) -> bool:
        """A Transpose is deferred: its input is a planar form of its output, so consumers
        that want some other layout get one Transpose from the input, not two. Of a planar
        tensor: one Transpose of the planar tensor instead."""
        data = node.input[0]
        t = self.attr(node, "perm") or list(range(self.rank(data) or 0))[::-1]
        if data not in self.planar:
            if not t:
                return False
            self.set_planar(node.output[0], data, inverse(t))
            return True
        pname, perm = self.planar[data]
        inv = inverse(perm)
        composed = [inv[t[j]] for j in range(len(t))]
        if composed == sorted(composed):
            self.emit("Identity", [pname], [node.output[0]])
        else:
            self.emit("Transpose", [pname], [node.output[0]], perm=composed)
        return True

    def reshape(self, node) -> bool:
        """A Reshape of the leading axes of a tensor whose k small trailing axes are planar
        (moved to the front, in order): the same Reshape behind those k axes. The target
        comes from the output's shape (at most one symbolic axis, written -1)."""
        data = node.input[0]
        out_shape = self.shapes.get(node.output[0])
        if (data not in self.planar or out_shape is None
                or sum(not isinstance(d, int) for d in out_shape) > 1):
            return False
        pname, perm = self.planar[data]
        canonical = self.trailing_perm(data)
        if perm != canonical and canonical is not None:     # e.g. a deferred Transpose
            pname, perm = self.to_planar(data, canonical), canonical
        shape, r = self.shapes[data], len(perm)
        k = r - 1 - perm[-1]                           # canonical: perm = (r-k..r-1, 0..r-k-1)
        new = [d if isinstance(d, int) else -1 for d in out_shape]   # the target, static
        if (k == 0 or perm != tuple(range(r - k, r)) + tuple(range(r - k)) or len(new) <= k
                or new[-k:] != shape[-k:]):
            return False
        out = self.fresh(node.output[0])
        self.emit("Reshape", [pname, self.const(np.array(new[-k:] + new[:-k], np.int64))],
                  [out])
        m = len(new)
        self.set_planar(node.output[0], out, tuple(range(m - k, m)) + tuple(range(m - k)))
        return True

    def grid_sample(self, node) -> bool:
        """GridSample(X [B, C, H, W], grid [B, h, w, 2]) -> [B, C, h, w] as gathers + lerps."""
        if (self.attr(node, "mode", b"linear") not in (b"linear", b"bilinear")
                or self.attr(node, "padding_mode", b"zeros") != b"border"
                or self.attr(node, "align_corners", 0) != 0):
            return False
        image, grid = node.input
        xs, out_shape = self.shapes.get(image), self.shapes.get(node.output[0])
        if xs is None or out_shape is None or not all(isinstance(d, int) for d in xs[1:]):
            return False
        b, c, h, w = xs
        grid_shape = self.shapes.get(grid)
        hw = grid_shape[1] * grid_shape[2] if all(
            isinstance(d, int) for d in grid_shape[1:3]) else -1
        if (not isinstance(b, int) and hw == -1) or sum(
                not isinstance(d, int) for d in out_shape) > 1:
            return False
        batch = b if isinstance(b, int) else -1
        planar = self.to_planar(grid, (3, 0, 1, 2))                  # [2, B, h, w]
        gx, gy = self.emit("Split", [planar], [self.fresh("gx"), self.fresh("gy")], axis=0,
                           num_outputs=2)

        def coordinate(g, size):
            """grid values -> pixel coordinate clamped to the image (border padding): the
            pixel before it, at most size - 2, as float, and the weight of the next one."""
            (g,) = self.emit("Reshape", [g, self.const(np.array([batch, 1, 1, hw], np.int64))])
            (p,) = self.emit("Mul", [g, self.const(np.float32(size / 2))])
            (p,) = self.emit("Add", [p, self.const(np.float32((size - 1) / 2))])
            (p,) = self.emit("Clip", [p, self.const(np.float32(0.0)),
                                      self.const(np.float32(size - 1))])
            (p0,) = self.emit("Min", [p, self.const(np.float32(size - 2))])
            (p0,) = self.emit("Floor", [p0])
            (frac,) = self.emit("Sub", [p, p0])                      # 0..1
            return p0, frac                                          # [B, 1, 1, hw] each

        x0, fx = coordinate(gx, w)
        y0, fy = coordinate(gy, h)
        (index,) = self.emit("Mul", [y0, self.const(np.float32(w))])
        (index,) = self.emit("Add", [index, x0])                     # exact: < 2^24
        (i00,) = self.emit("Cast", [index], to=onnx.TensorProto.INT32)
        (i01,) = self.emit("Add", [i00, self.const(np.int32(1))])
        (i10,) = self.emit("Add", [i00, self.const(np.int32(w))])
        (i11,) = self.emit("Add", [i10, self.const(np.int32(1))])
        corners = (i00, i01, i10, i11)
        points = per_frame(grid_shape[1]) * per_frame(grid_shape[2])  # lookups a frame (or 0)
        if c > 1 and 0 < 4 * (c - 1) * points < c * h * w:
            # few lookups in a large image: the channels as one table, each channel's corners
            # offset into it, rather than the image split into planes (a copy of it per call)
            (table,) = self.emit("Reshape", [self.original(image), self.const(
                np.array([batch, 1, 1, c * h * w], np.int64))])         # [B, 1, 1, C*HW]
            planes = [table] * c
            corners_of = [corners] + [
                tuple(self.emit("Add", [i, self.const(np.int32(k * h * w))])[0] for i in corners)
                for k in range(1, c)]
        else:
            (table,) = self.emit("Reshape", [self.original(image), self.const(
                np.array([batch, c, 1, h * w], np.int64))])
            planes = self.emit("Split", [table], [self.fresh("plane") for _ in range(c)],
                               axis=1, num_outputs=c) if c > 1 else [table]  # [B, 1, 1, HW] each
            corners_of = [corners] * c

        # bilinear weights of the four corners, once for all channels
        one = self.const(np.float32(1.0))
        (gx0,) = self.emit("Sub", [one, fx])
        (gy0,) = self.emit("Sub", [one, fy])
        weights = [self.emit("Mul", [wy, wx])[0] for wy in (gy0, fy) for wx in (gx0, fx)]
        channels = []
        for plane, at in zip(planes, corners_of, strict=True):     # one channel at a time
            terms = [self.emit("Mul", [self.emit("GatherElements", [plane, i], axis=3)[0], wt])[0]
                     for i, wt in zip(at, weights, strict=True)]         # [B, 1, 1, hw]
            channels.append(self.emit("Sum", terms)[0])
        (result,) = self.emit("Concat", channels, axis=1) if c > 1 else channels
        shape = [d if isinstance(d, int) else -1 for d in out_shape]
        self.emit("Reshape", [result, self.const(np.array(shape, np.int64))], [node.output[0]])
        return True

    # -- the pass ---------------------------------------------------------------------

    def run(self) -> onnx.ModelProto:
        handlers = {"Slice": self.slice, "Gather": self.gather, "Concat": self.concat,
                    "Split": self.split, "Squeeze": self.squeeze, "Unsqueeze": self.unsqueeze,
                    "Transpose": self.transpose, "Reshape": self.reshape,
                    "GridSample": self.grid_sample}
        for node in self.model.graph.node:
            op = node.op_type
            if op in BROADCAST or op in UNARY:
                done = self.elementwise(node)
            elif op in REDUCE:
                done = self.reduce(node)
            elif op in handlers:
                done = handlers[op](node)
            else:
                done = False
            if not done:
                for name in node.input:
                    if name:
                        self.original(name)
                self.nodes.append(node)
        for out in self.model.graph.output:
            self.original(out.name)
        graph = self.model.graph
        new_graph = helper.make_graph(self.nodes, graph.name, graph.input, graph.output,
                                      [*graph.initializer, *self.initializers])
        model = helper.make_model(new_graph, opset_imports=self.model.opset_import,
                                  ir_version=self.model.ir_version)
        return model


def fold_constants(path: str | Path) -> onnx.ModelProto:
    """The graph with its constant subgraphs folded (onnxruntime's basic level, which keeps
    standard ONNX ops and the exporter's shapes). The exporter leaves index arithmetic on
    constants in the graph: folded, the rewrite below sees constant axes, and TensorRT no
    uint8 inside the network."""
    import tempfile

    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as folder:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = str(Path(folder) / "folded.onnx")
        options.log_severity_level = 3
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return onnx.load(options.optimized_model_filepath)


def shapes_by_example(model: onnx.ModelProto, feeds, axis: str = "frames") -> onnx.ModelProto:
    """The graph with every computed value's shape measured, for a graph whose exporter left
    them unknown (the TorchScript exporter computes reshapes at run time, so ONNX's shape
    inference cannot follow them). feeds(n) gives the inputs for n along the dynamic axis;
    the graph runs once for n = 1 and once for 2, keeping every value: a dimension the same
    in both is that number, one twice as long is "k*frames" (as the dynamo exporter names
    them), any other is left unknown. The graph itself is unchanged."""
    import onnxruntime as ort

    graph = model.graph
    given = {v.name for v in graph.initializer} | {v.name for v in graph.input}
    names = list(dict.fromkeys(out for node in graph.node for out in node.output
                               if out and out not in given))
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    probe.graph.output.extend(helper.make_empty_tensor_value_info(name) for name in names)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep all
    options.log_severity_level = 3
    session = ort.InferenceSession(probe.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    one, two = ([(v.shape, v.dtype) for v in session.run(names, feeds(n))] for n in (1, 2))
    measured = []
    for name, (shape, dtype), (shape2, _) in zip(names, one, two, strict=True):
        if len(shape) != len(shape2):
            continue
        dims = [a if a == b else (axis if a == 1 else f"{a}*{axis}") if b == 2 * a else None
                for a, b in zip(shape, shape2, strict=True)]
        measured.append(helper.make_tensor_value_info(
            name, helper.np_dtype_to_tensor_dtype(dtype), dims))
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.value_info[:]
    out.graph.value_info.extend(measured)
    return out


def rewrite_for_cpu(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same computation, laid out for onnxruntime's CPU kernels (see the module doc)."""
    return Rewriter(model).run()
