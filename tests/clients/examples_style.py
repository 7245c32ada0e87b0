"""pytorch/examples word_language_model idioms: manual SGD (no torch.optim), clip_grad_norm_,
the whole model saved with torch.save(model) whenever validation improves, and reloaded at the
end with torch.load(weights_only=True) under safe_globals."""

import argparse
import os
import tempfile

import torch
import torch.nn as nn
import torch.nn.functional as F
from _trace import Trace

parser = argparse.ArgumentParser()
parser.add_argument("--out")
parser.add_argument("--epochs", type=int, default=3)
args = parser.parse_args()
torch.manual_seed(1111)

ntokens, emsize, nhid, bptt, batch = 40, 16, 24, 8, 4


class RNNModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.drop = nn.Dropout(0.2)
        self.encoder = nn.Embedding(ntokens, emsize)
        self.rnn = nn.LSTM(emsize, nhid, 1)
        self.decoder = nn.Linear(nhid, ntokens)

    def forward(self, input, hidden):
        emb = self.drop(self.encoder(input))
        output, hidden = self.rnn(emb, hidden)
        decoded = self.decoder(self.drop(output)).view(-1, ntokens)
        return F.log_softmax(decoded, dim=1), hidden

    def init_hidden(self, bsz):
        weight = next(self.parameters())
        return (weight.new_zeros(1, bsz, nhid), weight.new_zeros(1, bsz, nhid))


def repackage_hidden(h):
    return tuple(v.detach() for v in h)


corpus = torch.randint(
    0, ntokens, (bptt * 6 * batch + 1,), generator=torch.Generator().manual_seed(3)
)
train_data = corpus[:-1].view(batch, -1).t().contiguous()
targets_all = corpus[1:].view(batch, -1).t().contiguous()
model = RNNModel()
criterion = nn.NLLLoss()
lr, clip = 5.0, 0.25
trace = Trace()
trace.set("names", [n for n, _ in model.named_parameters()])
save = os.path.join(tempfile.mkdtemp(), "model.pt")
best_val_loss = None


def evaluate():
    model.eval()
    total, hidden = 0.0, model.init_hidden(batch)
    with torch.no_grad():
        for i in range(0, train_data.size(0), bptt):
            output, hidden = model(train_data[i : i + bptt], hidden)
            total += criterion(output, targets_all[i : i + bptt].reshape(-1)).item()
    return total


for epoch in range(1, args.epochs + 1):
    model.train()
    hidden = model.init_hidden(batch)
    for i in range(0, train_data.size(0), bptt):
        data, targets = train_data[i : i + bptt], targets_all[i : i + bptt].reshape(-1)
        model.zero_grad()
        hidden = repackage_hidden(hidden)
        output, hidden = model(data, hidden)
        loss = criterion(output, targets)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        for p in model.parameters():
            p.data.add_(p.grad, alpha=-lr)
        trace.add("loss", loss.item())
        trace.add("grad_norm", norm.item())
    val_loss = evaluate()
    print(f"| end of epoch {epoch:3d} | valid loss {val_loss:5.2f}")
    if not best_val_loss or val_loss < best_val_loss:
        with open(save, "wb") as f:
            torch.save(model, f)
        best_val_loss = val_loss

with (
    open(save, "rb") as f,
    torch.serialization.safe_globals([RNNModel, nn.Dropout, nn.Embedding, nn.LSTM, nn.Linear]),
):
    reloaded = torch.load(f, weights_only=True)
print(f"reloaded {type(reloaded).__name__} with {len(reloaded.state_dict())} tensors")
trace.save(model.state_dict())
