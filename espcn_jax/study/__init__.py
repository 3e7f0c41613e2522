"""The compute-budget study: sweep families x depths x budgets x seeds at matched FLOPs.

- :mod:`espcn_jax.study.grid`: a sweep is data: the list of points of a sweep config, each with
  the widths the solver picked for its budget; ``--shard=i/n`` partitions it.
- :mod:`espcn_jax.study.results`: the append-only ``results.jsonl`` (any etils/gfile path).
- :mod:`espcn_jax.study.point`: run one point: train, evaluate, measure cost on this device.
- :mod:`espcn_jax.study.stats` and :mod:`espcn_jax.study.report`: tables, paired differences,
  compute-equivalence, plots and the conclusion, all computed from the records.
"""
