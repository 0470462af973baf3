"""Training objectives, one per stage (DESIGN.md §6): each supplies its trained and frozen modules and
the losses of one optimiser step; :mod:`worldloop.model.train.loop` runs them all.

* :mod:`.flow_matching` — stages 1–2 (action injection, instruction SFT);
* :mod:`.distill` — stage 3 (Self-Forcing + DMD: student, critic, frozen teacher);
* :mod:`.long_extension` — stage 4 (the distill objective on long rollouts and windows).

The contract is :mod:`.base`; :mod:`.batch` turns windows into world-model inputs.
"""
