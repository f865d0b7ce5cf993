"""TVM kernels (TIR) for 2-D convolutions on CPUs: im2col into a column matrix and a
register-tiled GEMM over it (groups = 1), a direct kernel reading a padded copy of the input
(groups = 1, no column matrix), and a direct depthwise kernel. Each computes what
ref.py computes; shapes are fixed per build. Built and run on this machine by
host_conv (host_conv2d, host_conv2d_direct, host_im2col); used in artifacts by
relax_kernels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from graphopt.kernels.tvm.tiles import MicroKernel


@dataclass(frozen=True)
class ConvGeometry:
    """A 2-D NCHW convolution (groups = 1) seen as a GEMM: y[b] (K, P) = W (K, Q) @ cols[b]
    (Q, P), Q = C*R*S reduction entries ((c, r, s), s fastest), P = OH*OW output positions.
    pads are (top, left, bottom, right) as ONNX and Relax give them."""
    channels: int
    height: int
    width: int
    out_channels: int
    kernel: tuple[int, int]
    stride: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)
    dilation: tuple[int, int] = (1, 1)

    @property
    def out_height(self) -> int:
        return (self.height + self.pads[0] + self.pads[2]
                - self.dilation[0] * (self.kernel[0] - 1) - 1) // self.stride[0] + 1

    @property
    def out_width(self) -> int:
        return (self.width + self.pads[1] + self.pads[3]
                - self.dilation[1] * (self.kernel[1] - 1) - 1) // self.stride[1] + 1

    @property
    def reduction(self) -> int:
        return self.channels * self.kernel[0] * self.kernel[1]

    @property
    def positions(self) -> int:
        return self.out_height * self.out_width

    @property
    def pointwise(self) -> bool:
        """cols is the input itself, viewed as (C, H*W): 1x1, stride 1, no padding."""
        return self.kernel == (1, 1) and self.stride == (1, 1) and not any(self.pads)


def pack_conv_weight(w: np.ndarray, rows: int) -> np.ndarray:
    """(K, C, R, S) -> (panels, Q, rows): output channels in panels of the tile's rows, each
    panel contiguous along the reduction; the last panel zero-padded."""
    k = w.shape[0]
    flat = w.reshape(k, -1)
    panels = -(-k // rows)
    padded = np.zeros((panels * rows, flat.shape[1]), np.float32)
    padded[:k] = flat
    return np.ascontiguousarray(padded.reshape(panels, rows, -1).transpose(0, 2, 1))


def columns_width(p: int, tile: MicroKernel) -> int:
    """The im2col matrix's row length for the conv GEMM: P rounded up to whole register
    tiles, so the GEMM has no leftover positions to run apart (which read every weight a
    second time: ResNet's 7x7 layers, P = 49)."""
    return -(-p // tile.cols) * tile.cols


def im2col_func(g: ConvGeometry, width: int | None = None):
    """cols (b, Q, width) from x (b, C, H, W), b symbolic, zeros where the window leaves the
    input and in the columns past P (width >= P, default P). Threads over (image, channel);
    per (r, s, output row) the in-bounds output columns are one run copied with the input's
    stride (contiguous for stride 1), the rest zeroed. The body sits in a root block:
    Relax's RewriteDataflowReshape asks every one-input PrimFunc whether it is a reshape
    and asserts on a function without one."""
    from tvm.script import tirx as T
    c_in, h, w = g.channels, g.height, g.width
    (kr, ks), (sh, sw), (dh, dw) = g.kernel, g.stride, g.dilation
    top, left = g.pads[0], g.pads[1]
    oh_n, ow_n, q, p = g.out_height, g.out_width, g.reduction, g.positions
    width = p if width is None else width

    @T.prim_func(s_tir=True)
    def im2col(x_handle: T.handle, cols_handle: T.handle):
        T.func_attr({"global_symbol": "main", "tirx.noalias": True})
        b = T.int64()
        x = T.match_buffer(x_handle, (b, c_in, h, w), "float32")
        cols = T.match_buffer(cols_handle, (b, q, width), "float32")
        with T.sblock("root"):  # (see the docstring)
            for bc in T.parallel(b * c_in):
                for r in range(kr):
                    for s in range(ks):
                        # output columns whose input column lies inside: [lo, hi)
                        lo = T.min(T.max((left - s * dw + sw - 1) // sw, 0), ow_n)
                        hi = T.max(T.min((w - 1 + left - s * dw) // sw + 1, ow_n), lo)
                        for oh in range(oh_n):
                            ih = oh * sh - top + r * dh
                            row = ((bc % c_in) * kr + r) * ks + s
                            if ih >= 0 and ih < h:
                                for ow in range(lo):
                                    cols[bc // c_in, row, oh * ow_n + ow] = T.float32(0)
                                for ow in range(lo, hi):
                                    cols[bc // c_in, row, oh * ow_n + ow] = x[
                                        bc // c_in, bc % c_in, ih, ow * sw - left + s * dw]
                                for ow in range(hi, ow_n):
                                    cols[bc // c_in, row, oh * ow_n + ow] = T.float32(0)
                            else:
                                for ow in range(ow_n):
                                    cols[bc // c_in, row, oh * ow_n + ow] = T.float32(0)
                        for extra in range(width - p):
                            cols[bc // c_in, ((bc % c_in) * kr + r) * ks + s, p + extra] = \
                                T.float32(0)
    return im2col


def depthwise_func(g: ConvGeometry):
    """y (b, C, OH, OW) = depthwise conv2d of x (b, C, H, W) with w (C, R, S) (groups = C,
    one output channel per input channel), b symbolic. Threads over (image, channel); each
    copies its input plane once into a zero-bordered buffer (then no tap needs a bounds
    check), and per output row sums the R x S taps, unrolled, into a row accumulator: for
    stride 1 every tap is a contiguous run that LLVM vectorizes (55-80 GFLOP/s on
    MobileNet's 3x3 layers here, against 13-28 GFLOP/s bounds-checking each tap); stride 2
    layers are bound by reading the input (about 25 GFLOP/s)."""
    from tvm.script import tirx as T
    c_in, h, w = g.channels, g.height, g.width
    (kr, ks), (sh, sw), (dh, dw) = g.kernel, g.stride, g.dilation
    top, left, bottom, right = g.pads
    oh_n, ow_n = g.out_height, g.out_width
    ph, pw = h + top + bottom, w + left + right

    @T.prim_func
    def depthwise(x_handle: T.handle, wt: T.Buffer((c_in, kr, ks), "float32"),
                  y_handle: T.handle):
        T.func_attr({"global_symbol": "main", "tirx.noalias": True})
        b = T.int64()
        x = T.match_buffer(x_handle, (b, c_in, h, w), "float32")
        y = T.match_buffer(y_handle, (b, c_in, oh_n, ow_n), "float32")
        for bc in T.parallel(b * c_in):
            padded = T.decl_buffer((ph, pw), "float32", scope="global")
            acc = T.decl_buffer((ow_n,), "float32", scope="local")
            for i in range(top):
                for j in range(pw):
                    padded[i, j] = T.float32(0)
            for i in range(h):
                for j in range(left):
                    padded[i + top, j] = T.float32(0)
                for j in range(w):
                    padded[i + top, j + left] = x[bc // c_in, bc % c_in, i, j]
                for j in range(right):
                    padded[i + top, j + left + w] = T.float32(0)
            for i in range(bottom):
                for j in range(pw):
                    padded[i + top + h, j] = T.float32(0)
            for oh in range(oh_n):
                for o in range(ow_n):
                    acc[o] = T.float32(0)
                for r in T.unroll(kr):
                    for s in T.unroll(ks):
                        for o in range(ow_n):
                            acc[o] = acc[o] + wt[bc % c_in, r, s] * padded[
                                oh * sh + r * dh, o * sw + s * dw]
                for o in range(ow_n):
                    y[bc // c_in, bc % c_in, oh, o] = acc[o]
    return depthwise


CONV_CHUNK = 256  # reduction entries per pass: a block of cols (chunk x tile) stays in L1
CONV_PANELS = 8  # channel panels per task at most: they take turns over the same cols
CONV_SPAN = 16  # register tiles of positions per task: each weight chunk serves all of them
SPAN_MAX_TILES = 64  # ... where P is at most this many tiles (see conv_gemm_func)
CONV_MIN_TASKS = 8  # panel groups shrink until there are this many tasks (or one panel each)


def panel_group(panels: int, spans: int, most: int = CONV_PANELS) -> int:
    """Channel panels per task: as many as `most` while the tasks (spans x groups) number
    CONV_MIN_TASKS, fewer where that leaves too few to share among threads."""
    return max(1, min(most, -(-panels * spans // CONV_MIN_TASKS)))


def conv_gemm_func(out_channels: int, q: int, p: int, tile: MicroKernel,
                   chunk: int = CONV_CHUNK, group: int = CONV_PANELS, span: int | None = None,
                   width: int | None = None):
    """y (b, K, P) = W (K, Q) @ cols (b, Q, P) for W packed by pack_conv_weight, b symbolic.
    The register tile is tile.rows output channels x tile.cols positions. Threads over
    (image, span of `span` position tiles, group of channel panels); the reduction runs in
    chunks of `chunk` entries: per chunk each panel of the group passes over the span's
    tiles, so a weight chunk read from memory serves `span` tiles (a convolution's weights
    are cold in a model: read once per tile, ResNet's late layers were bound by them) and
    the span's columns, in L2, serve the group's panels; partial sums wait in a buffer
    between chunks. The group shrinks (panel_group) where tasks would be too few. Spans pay
    where the weights are read once per few tiles (P up to SPAN_MAX_TILES tiles: 12% faster
    at 14x14, 15% at 28x28 on this EPYC's AVX2 build) and cost a little on big images (one
    tile per task there, as before). `width` (a multiple of the tile, >= P): the columns'
    row length, padded with zeros (im2col_func's width): the last tile is computed whole
    and stored up to P. Without it, leftover positions (P not a multiple of the tile) run
    as one more zero-padded block, whole vectors wide, reading every weight again."""
    from tvm.script import tirx as T
    mr, nr = tile.rows, tile.cols
    panels = -(-out_channels // mr)
    padded = width is not None
    width = p if width is None else width
    blocks = width // nr if padded else p // nr
    if span is None:
        span = CONV_SPAN if blocks <= SPAN_MAX_TILES else 1
    span = max(1, min(span, blocks))
    spans = -(-blocks // span)
    group = panel_group(panels, max(spans, 1), group)
    groups = -(-panels // group)
    chunks = -(-q // chunk)
    per_image = max(spans * groups, 1)  # (the divisor; no full blocks: the loop is empty)
    tail_tasks = groups if p % nr and not padded else 0
    # the leftover block's width: whole vector registers where the tile is made of them (one
    # leftover position of a 7x7 layer is then computed 8-, not 16-wide, on AVX2; 24 of an
    # AVX-512 tile's 32 would be a vector and a half: 10x slower there)
    lanes = tile.lanes
    tw = min(nr, -(-(p % nr) // lanes) * lanes) if nr % lanes == 0 and p % nr else nr

    @T.prim_func
    def conv_gemm(cols_handle: T.handle, wp: T.Buffer((panels, q, mr), "float32"),
                  y_handle: T.handle):
        T.func_attr({"global_symbol": "main", "tirx.noalias": True})
        b = T.int64()
        cols = T.match_buffer(cols_handle, (b, q, width), "float32")
        y = T.match_buffer(y_handle, (b, out_channels, p), "float32")
        for t in T.parallel(b * (spans * groups)):
            img = t // per_image
            sp = t // groups % max(spans, 1)
            kg = t % groups
            sums = T.decl_buffer((group, span, mr, nr), "float32", scope="local")
            for g in range(group):
                for j in range(span):
                    for i in T.unroll(mr):
                        for c in T.vectorized(nr):
                            sums[g, j, i, c] = T.float32(0)
            for qc in range(chunks):
                for g in range(T.min(group, panels - kg * group)):
                    for j in range(T.min(span, blocks - sp * span)):
                        acc = T.decl_buffer((mr, nr), "float32", scope="local")
                        for i in T.unroll(mr):
                            for c in T.vectorized(nr):
                                acc[i, c] = sums[g, j, i, c]
                        for e in range(qc * chunk, T.min(q, qc * chunk + chunk)):
                            for i in T.unroll(mr):
                                for c in T.vectorized(nr):
                                    acc[i, c] = acc[i, c] + wp[kg * group + g, e, i] * cols[
                                        img, e, (sp * span + j) * nr + c]
                        for i in T.unroll(mr):
                            for c in T.vectorized(nr):
                                sums[g, j, i, c] = acc[i, c]
            for g in range(T.min(group, panels - kg * group)):
                for j in range(T.min(span, blocks - sp * span)):
                    for i in range(mr):
                        if (kg * group + g) * mr + i < out_channels:
                            if (sp * span + j) * nr + nr <= p:
                                for c in T.vectorized(nr):
                                    y[img, (kg * group + g) * mr + i,
                                      (sp * span + j) * nr + c] = sums[g, j, i, c]
                            else:  # the last tile of padded columns: up to P
                                for c in range(p - (sp * span + j) * nr):
                                    y[img, (kg * group + g) * mr + i,
                                      (sp * span + j) * nr + c] = sums[g, j, i, c]
        for t in T.parallel(b * tail_tasks):
            # the leftover positions: their columns copied per chunk into a zero-padded
            # tile-wide buffer, then the same register tiles as above
            sums = T.decl_buffer((group, mr, tw), "float32", scope="local")
            part = T.decl_buffer((chunk, tw), "float32", scope="local")
            for g in range(group):
                for i in T.unroll(mr):
                    for c in T.vectorized(tw):
                        sums[g, i, c] = T.float32(0)
            for qc in range(chunks):
                for e in range(T.min(chunk, q - qc * chunk)):
                    for c in range(tw):
                        part[e, c] = T.if_then_else(blocks * nr + c < p, cols[
                            t // groups, qc * chunk + e, blocks * nr + c], T.float32(0))
                for g in range(T.min(group, panels - t % groups * group)):
                    acc = T.decl_buffer((mr, tw), "float32", scope="local")
                    for i in T.unroll(mr):
                        for c in T.vectorized(tw):
                            acc[i, c] = sums[g, i, c]
                    for e in range(T.min(chunk, q - qc * chunk)):
                        for i in T.unroll(mr):
                            for c in T.vectorized(tw):
                                acc[i, c] = acc[i, c] + wp[t % groups * group + g,
                                                           qc * chunk + e, i] * part[e, c]
                    for i in T.unroll(mr):
                        for c in T.vectorized(tw):
                            sums[g, i, c] = acc[i, c]
            for g in range(T.min(group, panels - t % groups * group)):
                for i in range(mr):
                    if (t % groups * group + g) * mr + i < out_channels:
                        for c in range(p - blocks * nr):
                            y[t // groups, (t % groups * group + g) * mr + i,
                              blocks * nr + c] = sums[g, i, c]
    return conv_gemm


# ------------------------------------------------------------------- implicit GEMM (direct)
def padded_plane(g: ConvGeometry, cols: int) -> tuple[int, int]:
    """(height, width) of the padded input: the image with its pads, each row with slack
    besides so that a row's last register tile, `cols` positions wide, reads inside the
    buffer (what it computes past the row's end is never stored)."""
    return (g.height + g.pads[0] + g.pads[2],
            g.width + g.pads[1] + g.pads[3] + cols * g.stride[1])


def pad_func(g: ConvGeometry, cols: int):
    """xpad (b, C, *padded_plane) from x (b, C, H, W): zeros around. Threads
    over (image, channel)."""
    from tvm.script import tirx as T
    c_in, h, w = g.channels, g.height, g.width
    top, left, bottom, _ = g.pads
    ph, pw = padded_plane(g, cols)

    @T.prim_func(s_tir=True)
    def pad(x_handle: T.handle, xpad_handle: T.handle):
        T.func_attr({"global_symbol": "main", "tirx.noalias": True})
        b = T.int64()
        x = T.match_buffer(x_handle, (b, c_in, h, w), "float32")
        xpad = T.match_buffer(xpad_handle, (b, c_in, ph, pw), "float32")
        with T.sblock("root"):  # (see im2col_func)
            for bc in T.parallel(b * c_in):
                for i in range(ph):
                    if i >= top and i < top + h:
                        for j in range(left):
                            xpad[bc // c_in, bc % c_in, i, j] = T.float32(0)
                        for j in T.vectorized(w):
                            xpad[bc // c_in, bc % c_in, i, j + left] = x[
                                bc // c_in, bc % c_in, i - top, j]
                        for j in range(pw - left - w):
                            xpad[bc // c_in, bc % c_in, i, j + left + w] = T.float32(0)
                    else:
                        for j in range(pw):
                            xpad[bc // c_in, bc % c_in, i, j] = T.float32(0)
    return pad


def conv_direct_func(g: ConvGeometry, tile: MicroKernel, group: int = CONV_PANELS):
    """y (b, K, OH*OW) = conv2d of the padded input (pad_func) with W packed by
    pack_conv_weight, b symbolic, without an im2col matrix: the GEMM's columns are read
    straight from the padded input rows (for tap (c, r, s) and output row oh, the tile's
    positions ow..ow+cols read xpad[c, oh*sh + r*dh, ow*sw + s*dw ...], one contiguous run at
    stride 1). Threads over (image, output row, group of `group` channel panels); per tile
    of a row the group's panels each run the whole reduction in registers. The column
    matrix of im2col is C*R*S times the output's size: for a convolution with few output
    channels over a large image it is read from memory each time and its traffic, not the
    arithmetic, sets the time (PP-OCRv4 det: 96 -> 24 channels at 184x184, 117 MB of
    columns for 1.4 GFLOP)."""
    from tvm.script import tirx as T
    mr, nr = tile.rows, tile.cols
    c_in, k_out = g.channels, g.out_channels
    (kr, ks), (sh, sw), (dh, dw) = g.kernel, g.stride, g.dilation
    oh_n, ow_n, q = g.out_height, g.out_width, g.reduction
    ph, pw = padded_plane(g, nr)
    panels = -(-k_out // mr)
    groups = -(-panels // group)
    tiles = -(-ow_n // nr)  # per output row; the last one partly stored

    @T.prim_func
    def conv_direct(xpad_handle: T.handle, wp: T.Buffer((panels, q, mr), "float32"),
                    y_handle: T.handle):
        T.func_attr({"global_symbol": "main", "tirx.noalias": True})
        b = T.int64()
        xpad = T.match_buffer(xpad_handle, (b, c_in, ph, pw), "float32")
        y = T.match_buffer(y_handle, (b, k_out, oh_n * ow_n), "float32")
        for t in T.parallel(b * (oh_n * groups)):
            img = t // (oh_n * groups)
            oh = t // groups % oh_n
            kg = t % groups
            for j in range(tiles):
                for g_ in range(T.min(group, panels - kg * group)):
                    acc = T.decl_buffer((mr, nr), "float32", scope="local")
                    for i in T.unroll(mr):
                        for v in T.vectorized(nr):
                            acc[i, v] = T.float32(0)
                    for c in range(c_in):
                        for r in T.unroll(kr):
                            for s in T.unroll(ks):
                                for i in T.unroll(mr):
                                    for v in T.vectorized(nr):
                                        acc[i, v] = acc[i, v] + wp[
                                            kg * group + g_, (c * kr + r) * ks + s, i] * xpad[
                                            img, c, oh * sh + r * dh, (j * nr + v) * sw + s * dw]
                    for i in range(mr):
                        if (kg * group + g_) * mr + i < k_out:
                            if j * nr + nr <= ow_n:
                                for v in T.vectorized(nr):
                                    y[img, (kg * group + g_) * mr + i,
                                      oh * ow_n + j * nr + v] = acc[i, v]
                            else:
                                for v in range(ow_n - j * nr):
                                    y[img, (kg * group + g_) * mr + i,
                                      oh * ow_n + j * nr + v] = acc[i, v]
    return conv_direct
