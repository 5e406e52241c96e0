"""The refine stage: a data-driven spectral emulator and a per-star likelihood fit that refine
the network's labels.

- :mod:`.emulator` — labels → normalised flux with a per-pixel intrinsic scatter s²_λ: a
  Payne-style MLP on a spectral basis (default) or The Cannon's quadratic model; abundance
  ratios censored to their element's lines;
- :mod:`.train` — training it on the cleaned training stars' catalogue labels, with latent
  nuisance inputs (microturbulence, rotation: what the catalogue does not give) from the
  leading components of a labels-only emulator's residuals;
- :mod:`.fit` — batched Levenberg–Marquardt over stars (labels, latents, continuum correction,
  RV shift), χ² with σ² + s²_λ, formal covariance (JᵀWJ)⁻¹;
- :mod:`.calibration` — label scale, error model, the error correlation with the network (for
  the combined labels) and χ² flag threshold from the `valid` split, catalogue errors
  deconvolved;
- :mod:`.jobs` — the workflow's jobs (train_emulator, calibrate_refine, refine per shard);
- :mod:`.report` — refined against network labels and the truth, the flag's hit rates, the
  figure of data, model and residuals.
"""
