"""Forward-forward training (Hinton 2022, in the style of the popular reference script):
layers kept in a plain list, each an nn.Linear subclass with its own optimizer created in
__init__, forward() called directly, and the layers trained one after another."""

import argparse

import torch
import torch.nn as nn
from _trace import Trace, grad_norm

parser = argparse.ArgumentParser()
parser.add_argument("--out")
parser.add_argument("--epochs", type=int, default=5)
args = parser.parse_args()
torch.manual_seed(0)
trace = Trace()


class Layer(nn.Linear):
    def __init__(self, in_features, out_features):
        super().__init__(in_features, out_features)
        self.relu = nn.ReLU()
        self.opt = torch.optim.Adam(self.parameters(), lr=0.03)
        self.threshold = 2.0

    def forward(self, x):
        x_direction = x / (x.norm(2, 1, keepdim=True) + 1e-4)
        return self.relu(torch.mm(x_direction, self.weight.T) + self.bias.unsqueeze(0))

    def train_layer(self, x_pos, x_neg):
        for _ in range(args.epochs):
            g_pos = self.forward(x_pos).pow(2).mean(1)
            g_neg = self.forward(x_neg).pow(2).mean(1)
            loss = torch.log(
                1 + torch.exp(torch.cat([-g_pos + self.threshold, g_neg - self.threshold]))
            ).mean()
            self.opt.zero_grad()
            loss.backward()
            trace.add("loss", loss.item())
            trace.add("grad_norm", grad_norm(self.parameters()))
            self.opt.step()
        return self.forward(x_pos).detach(), self.forward(x_neg).detach()


class Net(nn.Module):
    def __init__(self, dims):
        super().__init__()
        self.layers = [Layer(dims[d], dims[d + 1]) for d in range(len(dims) - 1)]

    def train_net(self, x_pos, x_neg):
        h_pos, h_neg = x_pos, x_neg
        for i, layer in enumerate(self.layers):
            print("training layer", i, "...")
            h_pos, h_neg = layer.train_layer(h_pos, h_neg)


net = Net([10, 16, 16])
trace.set("names", ["Layer.weight", "Layer.bias", "Layer[1].weight", "Layer[1].bias"])
x_pos, x_neg = torch.randn(64, 10) + 0.5, torch.randn(64, 10) - 0.5
net.train_net(x_pos, x_neg)
trace.save(*[layer.state_dict() for layer in net.layers])
