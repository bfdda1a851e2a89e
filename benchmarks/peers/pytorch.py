"""PyTorch: nn.GRU / nn.LSTM, RMSprop(alpha=0.9, eps=1e-7); on CUDA where PyTorch sees a GPU
(cuDNN's RNNs, PyTorch's defaults), else on the CPU with its default threads."""
from __future__ import annotations

import torch
from torch import nn

from benchmarks.peers import Unsupported, require_classic_cells
from benchmarks.tasks import LEARNING_RATE, VOCAB, Task


class Model(nn.Module):

  def __init__(self, task: Task):
    super().__init__()
    (kind, units, _), = task.recurrent
    self.task = task
    self.embed = nn.Embedding(VOCAB, 32) if task.data == "imdb" else None
    features = 14 if task.data == "jena" else 32
    rnn = nn.GRU if kind == "gru" else nn.LSTM
    self.rnn = rnn(features, units, batch_first=True, bidirectional=kind == "bilstm")
    self.out = nn.Linear(units * (2 if kind == "bilstm" else 1), 1)

  def forward(self, x):
    if self.embed is not None:
      x = self.embed(x)
    _, state = self.rnn(x)
    h = state[0] if isinstance(state, tuple) else state  # [directions, batch, units]
    y = self.out(torch.cat(list(h), dim=-1))
    return torch.sigmoid(y) if self.task.loss == "bce" else y


def train_step(task: Task, x, y):
  require_classic_cells(task)
  if task.dropout:
    raise Unsupported("torch.nn.GRU/LSTM have no recurrent dropout (nor relu GRUs)")
  torch.manual_seed(0)
  device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
  net = Model(task).to(device)
  optimizer = torch.optim.RMSprop(net.parameters(), lr=LEARNING_RATE, alpha=0.9, eps=1e-7)
  x = (torch.from_numpy(x).long() if task.data == "imdb" else torch.from_numpy(x)).to(device)
  y = torch.from_numpy(y).to(device)
  loss_fn = nn.L1Loss() if task.loss == "mae" else nn.BCELoss()

  def run():
    optimizer.zero_grad()
    loss = loss_fn(net(x), y)
    loss.backward()
    optimizer.step()
    return float(loss)  # waits for the step (a device-to-host copy on CUDA)

  return run
