"""CNN backbones (torchvision/timm, local ImageNet weights) and the base of the CNN trainers."""
