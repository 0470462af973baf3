"""The player's controls: the keys an interactive world model is conditioned on (foundation layer).

One vocabulary for the camera kinematics (:mod:`worldloop.model.camera.actions`), the play protocol
(:mod:`worldloop.serving.protocol`) and the SDK. It sits below all of them, so a client speaks it
without importing the model (torch).
"""

from __future__ import annotations

from enum import Enum


class Key(str, Enum):
    W = "w"
    A = "a"
    S = "s"
    D = "d"
    SPACE = "space"
