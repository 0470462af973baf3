"""Evaluation: InterBench (interaction-centric benchmark) and general video metrics (DESIGN.md §7).

* ``metrics/`` — general video metrics (FVD with a pluggable feature network, image quality, temporal
  consistency, dynamic degree, camera RPE, PSNR/SSIM).
"""
