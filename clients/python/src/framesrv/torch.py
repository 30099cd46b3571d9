"""A PyTorch dataset over one video's frames, for data loaders (needs torch installed).

    from framesrv.torch import FrameDataset
    ds = FrameDataset("127.0.0.1:50051", "train/clip.mp4", max_size=(224, 224))
    loader = torch.utils.data.DataLoader(ds, batch_size=32, shuffle=True, num_workers=4)

Each worker process opens its own connection on first use (gRPC channels do not survive a
fork), and items are uint8 tensors (3, H, W) unless a `transform` says otherwise.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
from torch.utils.data import Dataset

from framesrv.client import Client, MaxSize


class FrameDataset(Dataset):
    def __init__(self, addr: str, video: str, indices: Optional[Sequence[int]] = None,
                 max_size: MaxSize = None, transform: Optional[Callable] = None, upright: bool = False,
                 keep_behind: Optional[int] = 0):
        self.addr, self.video, self.max_size, self.transform = addr, video, max_size, transform
        # A data loader does not step back from a frame to the ones before it: no backtrack
        # window behind cold frames (None: the daemon's default).
        self.upright, self.keep_behind = upright, keep_behind
        with Client(addr) as client:
            count = client.info(video).frame_count
        self.indices = list(range(count)) if indices is None else list(indices)
        self._client: Optional[Client] = None

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        if self._client is None:
            self._client = Client(self.addr)
        rgb = self._client.frame(self.video, index=self.indices[i], max_size=self.max_size, upright=self.upright,
                                 keep_behind=self.keep_behind)
        tensor = torch.from_numpy(rgb.copy()).permute(2, 0, 1)
        return self.transform(tensor) if self.transform else tensor

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_client"] = None
        return state
