"""A small CNN with parametrized weights: ``parametrizations.weight_norm`` and
``spectral_norm`` (parameters named ``….parametrizations.weight.original0``), a custom
``torch.nn.utils.parametrize`` constraint (a symmetric matrix), inputs and model in
``channels_last``, and the usual performance lines (cudnn.benchmark, TF32 matmul precision)."""

import argparse

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.nn.utils.parametrize as parametrize
from _trace import Trace, grad_norm
from torch.nn.utils.parametrizations import spectral_norm, weight_norm

parser = argparse.ArgumentParser()
parser.add_argument("--out")
args = parser.parse_args()
torch.manual_seed(0)
torch.backends.cudnn.benchmark = True
torch.backends.cuda.matmul.allow_tf32 = True
torch.set_float32_matmul_precision("high")


class Symmetric(nn.Module):
    def forward(self, X):
        return X.triu() + X.triu(1).transpose(-1, -2)


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = weight_norm(nn.Conv2d(3, 8, 3, padding=1))
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = spectral_norm(nn.Conv2d(8, 8, 3, padding=1))
        self.mix = nn.Linear(8, 8)
        parametrize.register_parametrization(self.mix, "weight", Symmetric())
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = F.relu(self.bn(self.conv1(x)))
        x = F.relu(self.conv2(x))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(torch.tanh(self.mix(x)))


model = ConvNet().to(memory_format=torch.channels_last)
opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
g = torch.Generator().manual_seed(6)
x = torch.randn(48, 3, 8, 8, generator=g).contiguous(memory_format=torch.channels_last)
y = torch.randint(0, 4, (48,), generator=g)
trace = Trace()
trace.set("names", [n for n, _ in model.named_parameters()])
layer_norms = []  # per step, per parameter
for step in range(8):
    opt.zero_grad()
    loss = F.cross_entropy(model(x[step % 3 :: 3]), y[step % 3 :: 3])
    loss.backward()
    trace.add("loss", loss.item())
    trace.add("grad_norm", grad_norm(model.parameters()))
    layer_norms.append([p.grad.double().norm().item() for p in model.parameters()])
    opt.step()
    print(f"step {step} loss {loss.item():.5f}")
model.eval()
with torch.no_grad():
    print(f"eval logits sum {model(x).sum().item():.5f}")
trace.set("layer_norms", layer_norms)
trace.save(model.state_dict())
