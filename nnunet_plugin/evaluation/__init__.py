"""Real-data benchmark harness: fine-tune any RaSD init on an nnU-Net raw dataset and compare inits.

Modules, one job each:

* :mod:`.data`: read an nnU-Net raw dataset (2D/3D NIfTI or PNG) and its train/test split;
* :mod:`.intensity`: scale intensities the way the weights' ``config.json`` says, fitted on
  training cases only;
* :mod:`.finetune`: a plain PyTorch fine-tuning loop with a fixed budget and seeds, and test Dice;
* :mod:`.stats`: mean, t-distribution 95 % confidence interval, paired t-test;
* :mod:`.probe`: frozen-feature nearest-prototype segmentation and PCA colouring;
* :mod:`.benchmark_data`: the benchmark datasets from registry packages with fixed splits;
* :mod:`.cli`: the ``rasd eval ...`` commands.

Like the rest of the plugin this package imports nothing heavy at import time.
"""
