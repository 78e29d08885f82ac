"""Small PyTorch modules the PyTorch tests save as TorchScript and as ExportedPrograms.

torchvision is not installed, so these stand in for the usual shapes of model: a conv net with
batch norm, an MLP with two inputs, and a self-attention block. They live in a module of their
own because torch.jit.script reads a module's source.
"""
from __future__ import annotations

from pathlib import Path

import torch


class ConvNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.norm = torch.nn.BatchNorm2d(8)
        self.fc = torch.nn.Linear(8, 10)

    def forward(self, image):
        features = torch.relu(self.norm(self.conv(image)))
        logits = self.fc(features.mean((2, 3)))
        return logits, torch.softmax(logits, -1)


class TwoInputMLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(16, 32)
        self.b = torch.nn.Linear(32, 4)

    def forward(self, x, y):
        return self.b(torch.nn.functional.gelu(self.a(x) + y))


class AttentionBlock(torch.nn.Module):
    """Pre-norm multi-head self-attention with a residual, written out (no fused kernels)."""

    def __init__(self, width: int = 32, heads: int = 4):
        super().__init__()
        self.heads = heads
        self.norm = torch.nn.LayerNorm(width)
        self.qkv = torch.nn.Linear(width, 3 * width)
        self.out = torch.nn.Linear(width, width)

    def forward(self, tokens):
        b, t, c = tokens.shape
        q, k, v = self.qkv(self.norm(tokens)).chunk(3, -1)
        q = q.view(b, t, self.heads, c // self.heads).transpose(1, 2)
        k = k.view(b, t, self.heads, c // self.heads).transpose(1, 2)
        v = v.view(b, t, self.heads, c // self.heads).transpose(1, 2)
        weights = torch.softmax(q @ k.transpose(-1, -2) / (c // self.heads) ** 0.5, -1)
        return tokens + self.out((weights @ v).transpose(1, 2).reshape(b, t, c))


class KeepsState(torch.nn.Module):
    """A streaming model's shape: a branch on the input, and state kept on the module between calls."""

    def __init__(self):
        super().__init__()
        self.state = torch.zeros(1, 8)

    def forward(self, x):
        if x.shape[0] > 1:
            return x * 2
        self.state = self.state + x
        return self.state


class TakesAnInt(torch.nn.Module):
    def forward(self, x, repeats: int):
        return x.repeat(repeats, 1)


def _module(cls, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    module = cls().eval()
    if isinstance(module, ConvNet):  # running statistics that are not 0/1, so batch norm matters
        module.norm.running_mean.uniform_(-0.5, 0.5)
        module.norm.running_var.uniform_(0.5, 2.0)
    return module


def traced(cls, path: Path, *example) -> Path:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.jit.trace(_module(cls), example).save(str(path))
    return Path(path)


def scripted(cls, path: Path) -> Path:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.jit.script(_module(cls)).save(str(path))
    return Path(path)


def exported(cls, path: Path, *example, dynamic_batch: bool = False) -> Path:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    dynamic = None
    if dynamic_batch:
        batch = torch.export.Dim("batch")
        dynamic = tuple({0: batch} for _ in example)
    torch.export.save(torch.export.export(_module(cls), example, dynamic_shapes=dynamic), str(path))
    return Path(path)


def reference(path: Path, *inputs) -> list:
    """torch's own outputs for a saved model, flattened, as numpy arrays."""
    from agent.compile.torch_frontend import flatten_outputs, load_runnable

    module, _ = load_runnable(path)
    with torch.no_grad():
        result = module(*[torch.from_numpy(i) for i in inputs])
    return [t.numpy() for t in flatten_outputs(result)]
