"""A training loop whose curve changes when an evaluation is added: run it under the tracer.

    python -m rng_fork trace examples/curve_changed.py
"""

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(0)
data = TensorDataset(torch.randn(256, 8), torch.randn(256, 1))
train_loader = DataLoader(data, batch_size=32, shuffle=True)
test_loader = DataLoader(data, batch_size=64)
model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(0.1), nn.Linear(32, 1))
optimizer = torch.optim.SGD(model.parameters(), lr=0.05)


def evaluate() -> float:
    model.eval()
    with torch.no_grad():
        loss = sum(nn.functional.mse_loss(model(x), y).item() for x, y in test_loader)
    model.train()
    return loss


for epoch in range(3):
    for x, y in train_loader:
        loss = nn.functional.mse_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    print(f"epoch {epoch}: train loss {loss.item():.4f}, test loss {evaluate():.4f}")
