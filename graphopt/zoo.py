"""Models at realistic shapes, written the way exporters write them (unoptimized).

Weights are seeded random (no downloads); the graph structure is what matters for graph
passes, and latency depends on shapes, not values. Every builder takes a `scale` so tests can
build tiny versions of the same graphs.

    resnet        ResNet-18: Conv(no bias)+BN+ReLU, residual adds, 1x1 downsample, MaxPool
    mobilenet_v2  inverted residuals, depthwise convs, ReLU6 as Clip(0, 6)
    mobilenet_v3  + decomposed HardSwish x*Clip(x+3,0,6)/6 and SE blocks with HardSigmoid
    tf_same_cnn   TF-style: NHWC input + Transpose, explicit asymmetric "same" Pads before
                  Conv and MaxPool, BN, Conv with bias + Add
    unet_decoder  ConvTranspose + BN + ReLU upsampling with skip Concat
    mlp_bn        Gemm + BatchNorm1d + ReLU, MatMul + Add, Dropout
    encoder       BERT-style (graphopt.testing.encoder) at d=768, 12 heads
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx

from graphopt.testing import ModelBuilder, encoder


def _conv_bn(b: ModelBuilder, x: str, cin: int, cout: int, k: int, stride: int = 1,
             group: int = 1, act: str | None = "Relu", pad: int | None = None) -> str:
    y = b.batchnorm(b.conv(x, cin, cout, k, stride, group, pad=pad, bias=False), cout)
    if act == "Relu":
        return b.node("Relu", [y])
    if act == "ReLU6":
        return b.node("Clip", [y, b.weight(np.float32(0), "zero"), b.weight(np.float32(6), "six")])
    if act == "HardSwish":
        return _hard_swish(b, y)
    return y


def _hard_swish(b: ModelBuilder, x: str) -> str:
    relu6 = b.node("Clip", [b.node("Add", [x, b.weight(np.float32(3), "three")]),
                            b.weight(np.float32(0), "zero"), b.weight(np.float32(6), "six")])
    return b.node("Div", [b.node("Mul", [x, relu6]), b.weight(np.float32(6), "six")])


def _head(b: ModelBuilder, x: str, cin: int, classes: int) -> str:
    h = b.node("Flatten", [b.node("GlobalAveragePool", [x])], axis=1)
    return b.node("Gemm", [h, b.weight(b.randn(classes, cin, scale=cin ** -0.5), "fc_w"),
                           b.weight(b.randn(classes, scale=0.01), "fc_b")], outputs=["logits"],
                  transB=1)


def resnet(scale: float = 1.0, image: int = 224, opset: int = 17) -> onnx.ModelProto:
    b = ModelBuilder(opset=opset, seed=11, name="resnet18")
    widths = [max(4, int(w * scale)) for w in (64, 128, 256, 512)]
    x = b.input("input", ["batch", 3, image, image])
    h = _conv_bn(b, x, 3, widths[0], 7, stride=2)
    h = b.node("MaxPool", [h], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    cin = widths[0]
    for stage, width in enumerate(widths):
        for block in range(2):
            stride = 2 if stage > 0 and block == 0 else 1
            y = _conv_bn(b, h, cin, width, 3, stride)
            y = _conv_bn(b, y, width, width, 3, act=None)
            skip = h if stride == 1 and cin == width else _conv_bn(b, h, cin, width, 1, stride,
                                                                    act=None, pad=0)
            h = b.node("Relu", [b.node("Add", [y, skip])])
            cin = width
    b.output(_head(b, h, cin, 1000), shape=["batch", 1000])
    return b.build()


def mobilenet_v2(scale: float = 1.0, image: int = 224, opset: int = 17) -> onnx.ModelProto:
    b = ModelBuilder(opset=opset, seed=12, name="mobilenet_v2")
    ch = lambda c: max(4, int(c * scale))  # noqa: E731
    x = b.input("input", ["batch", 3, image, image])
    h = _conv_bn(b, x, 3, ch(32), 3, stride=2, act="ReLU6")
    cin = ch(32)
    # (expansion, out channels, repeats, stride), the MobileNetV2 table
    for t, c, n, s in ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                       (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)):
        for i in range(n):
            stride, cout, hidden = (s if i == 0 else 1), ch(c), cin * t
            y = h if t == 1 else _conv_bn(b, h, cin, hidden, 1, act="ReLU6", pad=0)
            y = _conv_bn(b, y, hidden, hidden, 3, stride, group=hidden, act="ReLU6")
            y = _conv_bn(b, y, hidden, cout, 1, act=None, pad=0)
            h = b.node("Add", [h, y]) if stride == 1 and cin == cout else y
            cin = cout
    h = _conv_bn(b, h, cin, ch(1280), 1, act="ReLU6", pad=0)
    b.output(_head(b, h, ch(1280), 1000), shape=["batch", 1000])
    return b.build()


def mobilenet_v3(scale: float = 1.0, image: int = 224, opset: int = 17) -> onnx.ModelProto:
    b = ModelBuilder(opset=opset, seed=13, name="mobilenet_v3")
    ch = lambda c: max(4, int(c * scale))  # noqa: E731
    x = b.input("input", ["batch", 3, image, image])
    h = _conv_bn(b, x, 3, ch(16), 3, stride=2, act="HardSwish")
    cin = ch(16)
    # (kernel, expanded, out, squeeze-excite, activation, stride): MobileNetV3-Large (part)
    for k, exp, c, se, act, s in ((3, 16, 16, False, "Relu", 1), (3, 64, 24, False, "Relu", 2),
                                  (5, 72, 40, True, "Relu", 2), (3, 240, 80, False, "HardSwish", 2),
                                  (3, 480, 112, True, "HardSwish", 1),
                                  (5, 672, 160, True, "HardSwish", 2)):
        hidden, cout = ch(exp), ch(c)
        y = _conv_bn(b, h, cin, hidden, 1, act=act, pad=0)
        y = _conv_bn(b, y, hidden, hidden, k, s, group=hidden, act=act)
        if se:
            squeeze = max(4, hidden // 4)
            z = b.node("GlobalAveragePool", [y])
            z = b.node("Relu", [b.conv(z, hidden, squeeze, 1, pad=0)])
            z = b.conv(z, squeeze, hidden, 1, pad=0)
            gate = b.node("Div", [b.node("Clip", [b.node("Add", [z, b.weight(np.float32(3))]),
                                                  b.weight(np.float32(0)),
                                                  b.weight(np.float32(6))]),
                                  b.weight(np.float32(6))])
            y = b.node("Mul", [y, gate])
        y = _conv_bn(b, y, hidden, cout, 1, act=None, pad=0)
        h = b.node("Add", [h, y]) if s == 1 and cin == cout else y
        cin = cout
    h = _conv_bn(b, h, cin, ch(960), 1, act="HardSwish", pad=0)
    b.output(_head(b, h, ch(960), 1000), shape=["batch", 1000])
    return b.build()


def tf_same_cnn(scale: float = 1.0, image: int = 224, opset: int = 13) -> onnx.ModelProto:
    b = ModelBuilder(opset=opset, seed=14, name="tf_same_cnn")
    ch = lambda c: max(4, int(c * scale))  # noqa: E731
    x = b.input("input", ["batch", image, image, 3])  # NHWC, as TF exports keep it
    h = b.node("Transpose", [x], perm=[0, 3, 1, 2])

    def same_pad(t: str, before: int, after: int) -> str:
        pads = np.array([0, 0, before, before, 0, 0, after, after], np.int64)
        return b.node("Pad", [t, b.weight(pads, "pads"), b.weight(np.float32(0), "pad_value")])

    cin = 3
    for i, c in enumerate((32, 64, 128, 256)):
        cout = ch(c)
        h = b.conv(same_pad(h, 0, 1), cin, cout, 3, stride=2, pad=0)  # TF "SAME", stride 2
        h = b.node("Relu", [b.batchnorm(h, cout)])
        h = b.conv(same_pad(h, 1, 1), cout, cout, 3, pad=0, bias=False)
        h = b.node("Add", [h, b.weight(b.randn(1, cout, 1, 1, scale=0.1), "bias")])
        h = b.node("Relu", [b.batchnorm(h, cout)])
        if i == 1:
            h = b.node("MaxPool", [same_pad(h, 0, 1)], kernel_shape=[2, 2], strides=[1, 1])
        cin = cout
    h = b.node("Transpose", [h], perm=[0, 2, 3, 1])  # back to NHWC
    h = b.node("ReduceMean", [h], axes=[1, 2], keepdims=0)
    y = b.node("MatMul", [h, b.weight(b.randn(cin, 10, scale=cin ** -0.5))])
    y = b.node("Add", [y, b.weight(b.randn(10, scale=0.01))], outputs=["logits"])
    b.output(y, shape=["batch", 10])
    return b.build()


def unet_decoder(scale: float = 1.0, image: int = 28, opset: int = 17) -> onnx.ModelProto:
    b = ModelBuilder(opset=opset, seed=15, name="unet_decoder")
    ch = lambda c: max(4, int(c * scale))  # noqa: E731
    x = b.input("latent", ["batch", ch(256), image, image])
    skips = [b.input(f"skip{i}", ["batch", ch(c), image * 2 ** (i + 1), image * 2 ** (i + 1)])
             for i, c in enumerate((128, 64, 32))]
    h, cin = x, ch(256)
    for skip, c in zip(skips, (128, 64, 32)):
        cout = ch(c)
        w = b.weight(b.randn(cin, cout, 2, 2, scale=(cin * 4) ** -0.5), "up_w")
        h = b.node("ConvTranspose", [h, w, b.weight(b.randn(cout, scale=0.1), "up_b")],
                   kernel_shape=[2, 2], strides=[2, 2])
        h = b.node("Relu", [b.batchnorm(h, cout)])
        h = b.node("Concat", [h, skip], axis=1)
        h = _conv_bn(b, h, 2 * cout, cout, 3)
        h = _conv_bn(b, h, cout, cout, 3)
        cin = cout
    y = b.conv(h, cin, 2, 1, pad=0)
    size = image * 8
    b.output(b.node("Sigmoid", [y], outputs=["mask"]), shape=["batch", 2, size, size])
    return b.build()


def mlp_bn(scale: float = 1.0, opset: int = 13) -> onnx.ModelProto:
    b = ModelBuilder(opset=opset, seed=16, name="mlp_bn")
    widths = [max(4, int(w * scale)) for w in (512, 1024, 1024, 256)]
    x = b.input("features", ["batch", widths[0]])
    h, cin = x, widths[0]
    for w in widths[1:]:
        h = b.linear(h, cin, w)
        h = b.node("Relu", [b.batchnorm(h, w)])
        h = b.node("Dropout", [h])
        cin = w
    y = b.node("MatMul", [h, b.weight(b.randn(cin, 10, scale=cin ** -0.5))])
    b.output(b.node("Add", [y, b.weight(b.randn(10, scale=0.01))], outputs=["logits"]),
             shape=["batch", 10])
    return b.build()


def bert_encoder(scale: float = 1.0, opset: int = 21) -> onnx.ModelProto:
    heads = max(1, int(12 * scale))
    return encoder(opset=opset, d=64 * heads, heads=heads, layers=2, seed=17)


ZOO: dict[str, Callable[..., onnx.ModelProto]] = {
    "resnet18": resnet,
    "mobilenet_v2": mobilenet_v2,
    "mobilenet_v3": mobilenet_v3,
    "tf_same_cnn": tf_same_cnn,
    "unet_decoder": unet_decoder,
    "mlp_bn": mlp_bn,
    "bert_encoder": bert_encoder,
}

# Input shapes for benchmarks (dynamic axes fixed): batch 1, BERT at sequence length 128.
BENCH_SHAPES: dict[str, dict[str, list[int]]] = {
    "bert_encoder": {"x": [1, 128, 768]},
}


# ------------------------------------------------------------------ real model-zoo graphs
# The onnx wheel ships "light" copies of ONNX model-zoo models (opset 9): the real graphs as
# their converters wrote them, with every weight replaced by a ConstantOfShape node. We give
# them seeded random weights of the right shapes and scales, so they load, fold and run like
# the originals, offline.
ONNX_LIGHT = ("bvlc_alexnet", "densenet121", "inception_v1", "inception_v2", "resnet50",
              "shufflenet", "squeezenet", "vgg19", "zfnet512")


def onnx_light_model(name: str, seed: int = 0) -> onnx.ModelProto:
    """A real model-zoo architecture (see ONNX_LIGHT) with seeded random weights."""
    from pathlib import Path

    import onnx_graphsurgeon as gs

    from graphopt import ir

    if name not in ONNX_LIGHT:
        raise ValueError(f"unknown light model {name!r}; known: {', '.join(ONNX_LIGHT)}")
    path = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light" / f"light_{name}.onnx"
    graph = ir.import_graph(onnx.load(str(path)))
    rng = np.random.default_rng(seed)
    for node in list(graph.nodes):
        if node.op != "ConstantOfShape" or not isinstance(node.inputs[0], gs.Constant):
            continue
        shape = tuple(int(d) for d in np.ravel(node.inputs[0].values))
        fill = node.attrs.get("value")
        fill_value = np.ravel(fill.values)[0] if isinstance(fill, gs.Constant) else np.float32(0)
        if np.asarray(fill_value).dtype.kind != "f":
            continue
        out = node.outputs[0]
        node.outputs.clear()
        out.to_constant(_materialize(rng, shape, float(fill_value), out, ir.consumers(out)))
    ir.cleanup(graph)
    model = ir.to_onnx(graph)
    model.graph.name = f"onnx_zoo_{name}"
    return model


def _materialize(rng: np.random.Generator, shape: tuple[int, ...], fill: float, tensor,
                 consumers: list) -> np.ndarray:
    """Random weights at the scale the consumer expects (He/LeCun init, BN statistics)."""
    consumer = consumers[0] if consumers else None
    index = None if consumer is None else next(
        i for i, t in enumerate(consumer.inputs) if t is tensor)
    values = rng.standard_normal(shape)
    if consumer is not None and consumer.op in ("Conv", "Gemm", "MatMul") and len(shape) >= 2:
        fan_in = int(np.prod(shape[1:])) if consumer.op == "Conv" else shape[-1]
        values *= np.sqrt(2.0 / max(fan_in, 1)) if consumer.op == "Conv" else fan_in ** -0.5
    elif consumer is not None and consumer.op == "BatchNormalization" and index == 4:
        values = 1.0 + np.abs(0.1 * values)  # variance
    else:
        values = fill + 0.1 * values * max(abs(fill), 1.0)
    return values.astype(np.float32)


ZOO.update({f"onnx_{name}": (lambda n: lambda **_: onnx_light_model(n))(name)
            for name in ONNX_LIGHT})
