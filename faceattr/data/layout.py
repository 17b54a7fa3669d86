"""Where the dataset lives (torchvision's CelebA layout, so an existing torchvision folder works as ROOT):
    ROOT/celeba/img_align_celeba/NNNNNN.jpg
    ROOT/celeba/list_attr_celeba.txt, list_eval_partition.txt, identity_CelebA.txt
"""
from __future__ import annotations

from pathlib import Path

ATTR_FILE = "list_attr_celeba.txt"
PARTITION_FILE = "list_eval_partition.txt"
IDENTITY_FILE = "identity_CelebA.txt"
IMAGES_ZIP = "img_align_celeba.zip"
IMAGES_DIR = "img_align_celeba"


def celeba_dir(root: str | Path) -> Path:
    return Path(root) / "celeba"


def images_dir(root: str | Path) -> Path:
    return celeba_dir(root) / IMAGES_DIR
