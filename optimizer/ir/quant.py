"""`QuantScheme`: how a linear's weight is quantized (recorded on qlinear nodes and in the
manifest). Options are validated before any work is done."""

from __future__ import annotations

from dataclasses import dataclass

BITS = (2, 3, 4, 8)


@dataclass(frozen=True)
class QuantScheme:
    bits: int = 4
    group_size: int = 128   # 0 (or -1): one group per output channel
    sym: bool = False

    def __post_init__(self) -> None:
        if self.bits not in BITS:
            raise ValueError(f"bits: expected one of {BITS}, got {self.bits}")
        if self.group_size == -1:
            object.__setattr__(self, "group_size", 0)
        if self.group_size < 0 or (self.group_size and self.group_size < 8):
            raise ValueError(f"group_size: expected 0/-1 (per channel) or an int >= 8, "
                             f"got {self.group_size}")
