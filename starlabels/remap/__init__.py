"""deep-REMAP (Gilda 2023): labels as calibrated probability distributions.

A 1-D ResNet is pre-trained on degraded synthetic (PHOENIX) spectra and fine-tuned on a few
observed, labelled stars. Each label is a classification over bins; the point estimate is the
probability-weighted mean and the uncertainty the distribution's standard deviation.

Modules, one idea each:

- :mod:`.bins` — label ⇄ bin bookkeeping and summaries of a binned distribution;
- :mod:`.losses` — focal loss with a distance cost matrix, triplet loss on the embedding;
- :mod:`.calibration` — temperature scaling, expected calibration error, reliability curves,
  interval coverage;
- :mod:`.train` — the training phases: pre-training or fine-tuning with cosine annealing + SWA,
  checkpoints to resume bit for bit;
- :mod:`.member` — one ensemble member: the phases in order, temperature scaling, model folder;
- :mod:`.ensemble` — the calibration of all members' averaged distribution, per head (a
  dilation about its mean, or a shared temperature);
- :mod:`.predict` — ensemble probability averaging and nearest-neighbour lookup;
- :mod:`.evaluate` and :mod:`.report` — calibration on held-out stars and the
  report merged into metrics.json; the ablation study (its own target).
"""
