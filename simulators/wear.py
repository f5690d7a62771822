"""Cartridges and the lamp wearing with use: the physics behind the slow faults.

Life figures are DOMAIN.md's defaults. Wear is expressed as ``used`` = litres used / rated
litres (0 new, 1 at the end of its rated life, above 1 overdue):

* pre-filter (PP): clogging grows as ``used**1.5``; the pressure drop over the pre-filters is
  ``dp0 * (1 + 1.2 * clog)``, about twice the new value at the end of life, and the permeate flow
  falls to ``1 / (1 + 0.5 * clog)`` of its new value, under 70 % past the end of life;
* RO membrane: salt rejection falls from its new value towards 90 % at the end of rated life
  (quadratically: fouling accelerates), and the membrane's flux falls by up to 20 %;
* UV lamp: output falls linearly by 25 % over its rated hours.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt
from firmware_protocol import CartridgeKind

__all__ = [
    "STAGES",
    "UV_LAMP_LIFE_H",
    "membrane_flux_factor",
    "prefilter_clog",
    "prefilter_dp",
    "prefilter_flow_factor",
    "rejection",
    "uv_output",
]

FloatArray = npt.NDArray[np.float64]

#: (slot, kind, rated litres, rated days), the same chain in both machine classes.
STAGES: Final = (
    (1, CartridgeKind.PP, 3000.0, 180),
    (2, CartridgeKind.CARBON, 6000.0, 365),
    (3, CartridgeKind.RO, 15000.0, 900),
    (4, CartridgeKind.POST, 8000.0, 365),
)
SLOT_PP: Final = 0  # column of each stage in the fleet's [machine, stage] arrays
SLOT_RO: Final = 2
UV_LAMP_LIFE_H: Final = 9000


def prefilter_clog(used: FloatArray) -> FloatArray:
    return np.power(np.maximum(used, 0.0), 1.5)


def prefilter_dp(dp0: FloatArray, clog: FloatArray) -> FloatArray:
    return dp0 * (1.0 + 1.2 * clog)


def prefilter_flow_factor(clog: FloatArray) -> FloatArray:
    return 1.0 / (1.0 + 0.5 * clog)


def rejection(rejection_new: FloatArray, used: FloatArray) -> FloatArray:
    return rejection_new - (rejection_new - 0.90) * np.square(np.maximum(used, 0.0))


def membrane_flux_factor(used: FloatArray) -> FloatArray:
    return 1.0 - 0.2 * np.minimum(np.maximum(used, 0.0), 1.5)


def uv_output(hours: FloatArray, life_h: FloatArray) -> FloatArray:
    return 100.0 - 25.0 * np.minimum(hours / life_h, 2.0)
