"""Training, evaluation and analysis for qaa_vpr_ros (issue 3).

- ``training.datasets``: loaders for GSV-Cities, MSLS, ``@UTM@`` benchmarks, frame-synchronised
  traversals (Nordland) and the generic ``images.csv`` format.
- ``training.samplers``: the P x K place sampler, one per dataset, joint across datasets and ranks.
- ``training.losses``: the Multi-Similarity loss and miner, computed per dataset and summed.
- ``training.train``: ``python -m training.train --config CFG --out DIR [--set key=value ...]``.
- ``training.evaluate``: ``python -m training.evaluate --model PATH --dataset FORMAT:ROOT ...``.
- ``training.coding_rate``: coding rate of the predicted features P̂ (the paper's capacity argument).
"""
