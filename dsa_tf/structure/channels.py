"""Channel maps: which channel of which channel space each position of a tensor's last axis is.

A channel space is the set of channels one layer creates (a convolution's filters, a Dense
layer's units, a model input's channels). A tensor's last axis is described by a
:class:`ChannelMap`: for every position, the space it comes from and the channel index inside
that space. Channel-wise layers pass a map through, Concatenate joins maps, Flatten tiles them,
and a consumer such as a convolution slices its kernel with the map's keep mask. The same
space can appear several times in one map (Flatten, a depthwise conv with depth_multiplier > 1).
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class ChannelMap:
    """The origin of every position of a tensor's last axis.

    Attributes:
        spaces: int array, the channel space of each position.
        index: int array, the channel index inside that space.

    Example:
        >>> m = ChannelMap.whole(space=3, size=2).concat(ChannelMap.whole(space=5, size=1))
        >>> m.spaces.tolist(), m.index.tolist()
        ([3, 3, 5], [0, 1, 0])
    """

    spaces: np.ndarray
    index: np.ndarray

    @classmethod
    def whole(cls, space: int, size: int) -> ChannelMap:
        """All channels of one space, in order."""
        return cls(np.full(size, space, dtype=np.int64), np.arange(size, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.spaces)

    def concat(self, other: ChannelMap) -> ChannelMap:
        """This map followed by ``other`` (a Concatenate on the last axis)."""
        return ChannelMap(
            np.concatenate([self.spaces, other.spaces]), np.concatenate([self.index, other.index])
        )

    def tile(self, times: int) -> ChannelMap:
        """The map repeated ``times`` times (Flatten of a channels-last tensor)."""
        return ChannelMap(np.tile(self.spaces, times), np.tile(self.index, times))

    def repeat(self, times: int) -> ChannelMap:
        """Every position repeated ``times`` times in place (depthwise channel multiplier)."""
        return ChannelMap(np.repeat(self.spaces, times), np.repeat(self.index, times))

    def renamed(self, space_of: np.ndarray) -> ChannelMap:
        """The same map with every space id replaced by ``space_of[id]``."""
        return ChannelMap(space_of[self.spaces], self.index)

    def keep_mask(self, kept: dict[int, np.ndarray]) -> np.ndarray:
        """Boolean mask of the positions whose channel is kept.

        Args:
            kept: for each space id with pruned channels, a boolean array over its channels;
                spaces that are missing keep all their channels.
        """
        mask = np.ones(len(self), dtype=bool)
        for space in np.unique(self.spaces):
            if int(space) in kept:
                where = self.spaces == space
                mask[where] = kept[int(space)][self.index[where]]
        return mask
