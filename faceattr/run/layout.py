"""Every path inside one run folder.

    RUN/config.json            the RunConfig
    RUN/split.csv              image_id,split (train|val|test)
    RUN/checkpoints/epoch_K.pt one per trained epoch
    RUN/metrics/{split}_epoch_K.json
    RUN/best.json, RUN/model.pt, RUN/report/, RUN/cache/
"""
from __future__ import annotations

from pathlib import Path


class RunLayout:
    """Paths inside one run folder."""

    def __init__(self, run_dir: str | Path):
        self.root = Path(run_dir)

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def split(self) -> Path:
        return self.root / "split.csv"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    def checkpoint(self, epoch: int) -> Path:
        return self.checkpoints / f"epoch_{epoch}.pt"

    def metrics(self, split: str, epoch: int) -> Path:
        return self.root / "metrics" / f"{split}_epoch_{epoch}.json"

    @property
    def best(self) -> Path:
        return self.root / "best.json"

    @property
    def model(self) -> Path:
        return self.root / "model.pt"

    @property
    def report(self) -> Path:
        return self.root / "report"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    def trained_epochs(self) -> list[int]:
        """Epoch numbers that have a checkpoint, ascending."""
        found = []
        for path in self.checkpoints.glob("epoch_*.pt"):
            suffix = path.stem.removeprefix("epoch_")
            if suffix.isdigit():
                found.append(int(suffix))
        return sorted(found)
