"""deep-REMAP (Gilda 2023): labels as calibrated probability distributions.

A 1-D ResNet is pre-trained on degraded synthetic (PHOENIX) spectra and fine-tuned on a few
observed, labelled stars. Each label is a classification over bins; the point estimate is the
probability-weighted mean and the uncertainty the distribution's standard deviation.

Modules, one idea each:

- :mod:`.bins` — label ⇄ bin bookkeeping and summaries of a binned distribution;
- :mod:`.losses` — focal loss with a distance cost matrix, triplet loss on the embedding;
- :mod:`.calibration` — temperature scaling, expected calibration error, reliability curves,
  interval coverage;
- :mod:`.train` — pre-training, fine-tuning, cosine annealing + SWA, one ensemble member;
- :mod:`.predict` — ensemble probability averaging and nearest-neighbour lookup.
"""
