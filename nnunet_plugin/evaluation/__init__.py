"""Real-data benchmark harness: fine-tune any RaSD init on an nnU-Net raw dataset and compare inits.

Modules, one job each:

* :mod:`.data`: read an nnU-Net raw dataset (2D/3D NIfTI or PNG) and its train/test split;
* :mod:`.finetune`: a plain PyTorch fine-tuning loop with a fixed budget and seeds, and test Dice;
  intensities take ``RaSDTrainer``'s path (:mod:`nnunet_plugin.normalization`), fitted on the
  training cases only;
* :mod:`.stats`: mean, t-distribution 95 % confidence interval, paired and one-sample t-tests;
* :mod:`.probe`: frozen-feature nearest-prototype segmentation and PCA colouring;
* :mod:`.benchmark_data`: the benchmark datasets from registry packages with fixed splits;
* :mod:`.cli`: the ``rasd eval ...`` commands.

Like the rest of the plugin this package imports nothing heavy at import time.
"""
