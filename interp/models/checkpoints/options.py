"""Where and in which precision a checkpoint is loaded: the options every loader takes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from interp.errors import InterpError

__all__ = ["Dtype", "LoadOptions"]

Dtype = Literal["float32", "bfloat16", "float16"]
_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class LoadOptions:
    """Where and in which precision to load a checkpoint.

    device: one torch device ("cpu", "cuda", "cuda:1"). device_map: "auto" (or "balanced", "sequential")
    spreads a model too large for one GPU over all of them, through accelerate; when given, it replaces
    `device`. dtype: the precision of every weight.
    """

    device: str = "cpu"
    dtype: Dtype = "float32"
    device_map: str | None = None

    def __post_init__(self) -> None:
        if self.dtype not in _DTYPES:
            raise InterpError(f"unknown dtype {self.dtype!r}; choose one of {', '.join(_DTYPES)}")
        try:
            torch.device(self.device)
        except RuntimeError as error:
            raise InterpError(f"{self.device!r} is not a torch device (cpu, cuda, cuda:1, ...)") from error

    @property
    def torch_dtype(self) -> torch.dtype:
        return _DTYPES[self.dtype]

    def torch_device(self) -> torch.device:
        """The device, checked to exist here (CUDA present, index in range)."""
        device = torch.device(self.device)
        if device.type == "cuda":
            if not torch.cuda.is_available():
                raise InterpError(f"device {self.device!r} asked for, but this torch ({torch.__version__}) sees no "
                                  "CUDA GPU")
            if device.index is not None and device.index >= torch.cuda.device_count():
                raise InterpError(f"device {self.device!r} asked for, but only {torch.cuda.device_count()} CUDA "
                                  "GPU(s) are visible")
        return device

    @property
    def placement(self) -> str:
        """What `from_pretrained(device_map=...)` gets: the device map if given, else the one device."""
        return self.device_map or self.device

