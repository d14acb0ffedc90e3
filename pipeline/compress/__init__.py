"""Compress: block-wise knowledge distillation that finds the most accurate student under a budget.

After Ahmed, Zunino, Morerio, Murino, "Compact CNN Structure Learning by Knowledge Distillation"
(ICPR 2020): cut the teacher into blocks, distil candidate student blocks block-wise, choose one per
block under a FLOPs / parameter budget (an exact multiple-choice knapsack), assemble, fine-tune with
distillation. FLOPs count a multiply-add as 2 operations (``pipeline.torchmodel.count_flops``).

Modules: ``options`` (budget, search space, settings: plain data), ``compressor`` (``compress``, ``finetune``),
``blocks``, ``search``, ``selection``, ``student``, ``distributed``. The package itself imports nothing, so that
reading a configuration does not import torch.
"""
