"""Models built from code (no downloads): the EuroSAT report's CNN."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class EuroSATCNN(nn.Module):
    """The CNN of the EuroSAT FedAvg + PTQ report (``eurosat/task.py``): 434,602 parameters for 64x64 RGB input.

    conv5(3->32)-BN-ReLU-pool, conv5(32->64)-BN-ReLU-pool, conv3(64->96)-BN-ReLU-pool, then
    FC 2400->128->128->num_classes with ReLU between.
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 5)
        self.bn1 = nn.BatchNorm2d(32)
        self.conv2 = nn.Conv2d(32, 64, 5)
        self.bn2 = nn.BatchNorm2d(64)
        self.conv3 = nn.Conv2d(64, 96, 3)
        self.bn3 = nn.BatchNorm2d(96)
        self.fc1 = nn.Linear(96 * 5 * 5, 128)
        self.fc2 = nn.Linear(128, 128)
        self.fc3 = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Functional ReLU/pooling: one shared module instance would merge all its call sites into one
        # partition for pt2e quantizers.
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        x = F.max_pool2d(F.relu(self.bn3(self.conv3(x))), 2)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)
