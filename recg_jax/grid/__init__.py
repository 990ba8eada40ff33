"""The experiment grid and the studies built on it (their command lines: recg_jax.experiments and
recg_jax.baselines), one concern a module.

- planning.py: which runs a grid holds (RunSpec, grid_axes, plan_runs, shard_of) and each run's config
  (run_config), and which runs train together (member_groups).
- stats.py: finished runs aggregated over seeds (observations, aggregate, aggregate_grid), gains and
  paired t-tests, results.csv.
- report.py: the markdown tables (results.md, tables/<section>.md) with their header and footnotes.
- figures.py: what the plots draw (pair_bar_data, alpha_series, projected_items of a run's best
  parameters) and DIR/plots/*.png.
- runner.py: running the plan (run_grid, run_pending; each group through pipeline.train_and_transfer),
  each run's done.json / failed.json marker, and the machine the runs are on; after the runs, the tables
  and figures.
- baselines.py: the baselines study (named presets against the training-free text_knn), its plan and
  its report, run through runner.run_pending.
- lodo.py, lodo_report.py: the leave-one-domain-out study and its tables.
- warm_start.py, warm_start_report.py: the warm-start study (budgets of a domain's interactions, from
  scratch and fine-tuned from the leave-one-out runs), its tables and crossover figure.

A module imports only those listed above it.
"""
