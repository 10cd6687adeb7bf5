"""PyTorch stand-ins for torchvision's AlexNet, VGG16 and ResNet-50 (test references only).

The torchvision wheels on PyPI are built for the CUDA torch and do not import with the CPU torch
pin, so the tests build these instead. Each has torchvision's module tree, hence the same
``state_dict`` keys and shapes (``features.0.weight``, ``layer1.0.downsample.1.running_var``,
``fc.weight``, ...) and the same forward computation; ``features_out(x)`` returns what
orthohash_jax.backbones returns: NCHW float32 (B, 3, H, W) -> (B, 4096) = ``classifier[:6]``
(AlexNet, VGG16) or (B, 2048) pooled (ResNet-50); ``forward`` returns the logits. Weights are
torch's layer defaults; ``randomize`` draws every parameter and BN statistic at random.
"""
import torch
from torch import nn


class _FeaturesAvgpoolClassifier(nn.Module):
  """torchvision's features -> avgpool -> flatten -> classifier layout (AlexNet, VGG)."""

  def features_out(self, x):
    return self.classifier[:6](torch.flatten(self.avgpool(self.features(x)), 1))

  def forward(self, x):
    return self.classifier[6](self.features_out(x))


class AlexNet(_FeaturesAvgpoolClassifier):
  """torchvision.models.AlexNet's layers and names."""

  def __init__(self, num_classes=1000):
    super().__init__()
    self.features = nn.Sequential(
        nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
        nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
        nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2))
    self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
    self.classifier = nn.Sequential(
        nn.Dropout(0.5), nn.Linear(256 * 36, 4096), nn.ReLU(inplace=True),
        nn.Dropout(0.5), nn.Linear(4096, 4096), nn.ReLU(inplace=True),
        nn.Linear(4096, num_classes))


class VGG16(_FeaturesAvgpoolClassifier):
  """torchvision.models.vgg16's layers and names (configuration D, no BN)."""

  def __init__(self, num_classes=1000):
    super().__init__()
    layers, channels = [], 3
    for stage in ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)):
      for width in stage:
        layers += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(inplace=True)]
        channels = width
      layers.append(nn.MaxPool2d(2, 2))
    self.features = nn.Sequential(*layers)
    self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
    self.classifier = nn.Sequential(
        nn.Linear(512 * 49, 4096), nn.ReLU(True), nn.Dropout(0.5),
        nn.Linear(4096, 4096), nn.ReLU(True), nn.Dropout(0.5),
        nn.Linear(4096, num_classes))


class Bottleneck(nn.Module):
  """torchvision's Bottleneck (stride on conv2)."""

  def __init__(self, in_channels, width, stride):
    super().__init__()
    self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(width)
    self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
    self.bn2 = nn.BatchNorm2d(width)
    self.conv3 = nn.Conv2d(width, 4 * width, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(4 * width)
    self.relu = nn.ReLU(inplace=True)
    self.downsample = None
    if stride != 1 or in_channels != 4 * width:
      self.downsample = nn.Sequential(nn.Conv2d(in_channels, 4 * width, 1, stride=stride,
                                                bias=False), nn.BatchNorm2d(4 * width))

  def forward(self, x):
    y = self.relu(self.bn1(self.conv1(x)))
    y = self.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    return self.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNet50(nn.Module):
  """torchvision.models.resnet50's layers and names."""

  def __init__(self, num_classes=1000):
    super().__init__()
    self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
    self.bn1 = nn.BatchNorm2d(64)
    self.relu = nn.ReLU(inplace=True)
    self.maxpool = nn.MaxPool2d(3, 2, padding=1)
    channels = 64
    for i, (width, blocks, stride) in enumerate(((64, 3, 1), (128, 4, 2), (256, 6, 2),
                                                 (512, 3, 2))):
      stage = []
      for j in range(blocks):
        stage.append(Bottleneck(channels, width, stride if j == 0 else 1))
        channels = 4 * width
      setattr(self, f"layer{i + 1}", nn.Sequential(*stage))
    self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
    self.fc = nn.Linear(2048, num_classes)

  def features_out(self, x):
    x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
    x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
    return torch.flatten(self.avgpool(x), 1)

  def forward(self, x):
    return self.fc(self.features_out(x))


REPLICAS = {"alexnet": AlexNet, "vgg16": VGG16, "resnet50": ResNet50}


def randomize(model: nn.Module, seed: int) -> nn.Module:
  """Random weights (scaled to keep activations O(1)) and, for BN, random running statistics."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for module in model.modules():
      if isinstance(module, (nn.Conv2d, nn.Linear)):
        fan_in = module.weight[0].numel()
        module.weight.copy_(torch.randn(module.weight.shape, generator=gen) * (2 / fan_in) ** 0.5)
        if module.bias is not None:
          module.bias.copy_(torch.randn(module.bias.shape, generator=gen) * 0.1)
      elif isinstance(module, nn.BatchNorm2d):
        n = module.num_features
        module.weight.copy_(1 + 0.2 * torch.randn(n, generator=gen))
        module.bias.copy_(0.2 * torch.randn(n, generator=gen))
        module.running_mean.copy_(0.2 * torch.randn(n, generator=gen))
        module.running_var.copy_(0.5 + torch.rand(n, generator=gen))
  return model.eval()
