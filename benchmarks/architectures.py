"""Standard architectures the benchmark suite builds itself, in plain PyTorch, at fixed shapes.

    python benchmarks/architectures.py OUT_DIR     -> OUT_DIR/<name>.onnx for every model

ResNet-50 (He et al. 2015, torchvision's layout: bottleneck blocks, stride on the 3x3),
MobileNetV2 (Sandler et al. 2018, width 1.0: inverted residuals, ReLU6) and a BERT-base
encoder (Devlin et al. 2018: 12 layers, hidden 768, 12 heads, feed-forward 3072, GELU,
post-LayerNorm) over a sequence of 128 embeddings. Written out here because torchvision and
transformers do not install beside torch 2.13.0's CPU build on this machine, and no model hub
is reached: the weights are random with a fixed seed, and batch norm is folded by the export.
Latency does not depend on the weights' values, only on the shapes, which are the published
ones. Needs torch (pip install torch==2.13.0 onnxscript; pyproject's "bench" extra).
"""
from __future__ import annotations

import sys
from pathlib import Path

# name -> (input name, shape, builder); the builders are below
SHAPES = {
    "resnet50": ("input", [1, 3, 224, 224]),
    "mobilenetv2": ("input", [1, 3, 224, 224]),
    "bert-base": ("hidden_states", [1, 128, 768]),
}
OPSET = 17


def resnet50():
    from torch import nn

    class Bottleneck(nn.Module):
        def __init__(self, inplanes: int, planes: int, stride: int):
            super().__init__()
            width, out = planes, planes * 4
            self.body = nn.Sequential(
                nn.Conv2d(inplanes, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
                nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
                nn.Conv2d(width, out, 1, bias=False), nn.BatchNorm2d(out))
            self.down = None
            if stride != 1 or inplanes != out:
                self.down = nn.Sequential(nn.Conv2d(inplanes, out, 1, stride, bias=False), nn.BatchNorm2d(out))
            self.relu = nn.ReLU(inplace=True)

        def forward(self, x):
            return self.relu(self.body(x) + (x if self.down is None else self.down(x)))

    layers, inplanes = [], 64
    for planes, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        for i in range(blocks):
            layers.append(Bottleneck(inplanes, planes, stride if i == 0 else 1))
            inplanes = planes * 4
    return nn.Sequential(
        nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1),
        *layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2048, 1000))


def mobilenetv2():
    from torch import nn

    def conv(cin, cout, k, stride, groups=1, act=True):
        mods = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
        return nn.Sequential(*mods, nn.ReLU6(inplace=True)) if act else nn.Sequential(*mods)

    class Inverted(nn.Module):
        def __init__(self, cin, cout, stride, expand):
            super().__init__()
            hidden = cin * expand
            self.residual = stride == 1 and cin == cout
            self.body = nn.Sequential(*([conv(cin, hidden, 1, 1)] if expand != 1 else []),
                                      conv(hidden, hidden, 3, stride, groups=hidden),
                                      conv(hidden, cout, 1, 1, act=False))

        def forward(self, x):
            return x + self.body(x) if self.residual else self.body(x)

    blocks, cin = [], 32
    for expand, cout, n, stride in ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                                    (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)):
        for i in range(n):
            blocks.append(Inverted(cin, cout, stride if i == 0 else 1, expand))
            cin = cout
    return nn.Sequential(conv(3, 32, 3, 2), *blocks, conv(320, 1280, 1, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Dropout(0.2), nn.Linear(1280, 1000))


def bert_base():
    import torch
    from torch import nn

    hidden, heads, ffn = 768, 12, 3072

    class Layer(nn.Module):   # BERT's: self-attention, add & norm, GELU feed-forward, add & norm
        def __init__(self):
            super().__init__()
            self.qkv = nn.Linear(hidden, 3 * hidden)
            self.out = nn.Linear(hidden, hidden)
            self.norm1, self.norm2 = nn.LayerNorm(hidden, eps=1e-12), nn.LayerNorm(hidden, eps=1e-12)
            self.up, self.down = nn.Linear(hidden, ffn), nn.Linear(ffn, hidden)

        def forward(self, x):
            batch, seq, _ = x.shape
            q, k, v = self.qkv(x).reshape(batch, seq, 3, heads, hidden // heads).permute(2, 0, 3, 1, 4).unbind(0)
            scores = torch.matmul(q, k.transpose(-1, -2)) * (hidden // heads) ** -0.5
            context = torch.matmul(scores.softmax(-1), v).transpose(1, 2).reshape(batch, seq, hidden)
            x = self.norm1(x + self.out(context))
            return self.norm2(x + self.down(nn.functional.gelu(self.up(x))))

    return nn.Sequential(*[Layer() for _ in range(12)])


BUILDERS = {"resnet50": resnet50, "mobilenetv2": mobilenetv2, "bert-base": bert_base}


def seeded(name: str):
    """`name` built with seeded weights, in eval mode (a torch.nn.Module)."""
    import torch

    torch.manual_seed(0)
    model = BUILDERS[name]().eval()
    for module in model.modules():   # non-trivial batch-norm statistics, as a trained model has
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    return model


def export(name: str, out_dir: Path) -> Path:
    """Build `name` with seeded weights, in eval mode, and write out_dir/<name>.onnx."""
    import torch

    model = seeded(name)
    input_name, shape = SHAPES[name]
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.onnx"
    with torch.no_grad():
        torch.onnx.export(model, (torch.randn(*shape),), str(path), input_names=[input_name],
                          output_names=["output"], opset_version=OPSET, dynamo=False)
    return path


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "models")
    for model_name in BUILDERS:
        print(export(model_name, out))
