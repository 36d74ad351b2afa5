"""Data: data sets, the paper's transforms, mixup/cutmix."""
