"""Auto-tune: the fastest sampler x steps x accelerator setting that stays close to the full run, found on the
user's own model and prompt (issue 16).

Layers: ``space`` (what a candidate is and what it costs), ``metrics`` (PSNR/SSIM/LPIPS), ``standalone`` (runs a
candidate on a loaded ``DiffusionModel``), ``search`` (the budgeted search and the timing protocol), ``report``
(JSON, table and Pareto plot). Front ends reach it through ``nodes/autotune.py``; nothing here imports ``nodes``.
"""
