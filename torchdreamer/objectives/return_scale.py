"""DreamerV3's return normalisation, kept by the recipe (:mod:`torchdreamer.dreamer`)."""

from torchdreamer.dreamer.return_scale import ReturnScale

__all__ = ["ReturnScale"]
