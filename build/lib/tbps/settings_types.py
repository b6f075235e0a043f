"""Types that say what a setting may hold, used in the signatures of heads, the data module
and the config schema (``tbps.settings``), so every key declares its range where it is
defined. They are pydantic's constrained types: plain ``float`` / ``int`` at run time."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt

Rate = Annotated[float, Field(ge=0.0, le=1.0)]            # a share or probability in [0, 1]
OpenRate = Annotated[float, Field(gt=0.0, le=1.0)]        # in (0, 1]
Momentum = Annotated[float, Field(ge=0.0, lt=1.0)]        # in [0, 1)

__all__ = ["Momentum", "NonNegativeFloat", "NonNegativeInt", "OpenRate", "PositiveFloat",
           "PositiveInt", "Rate"]
