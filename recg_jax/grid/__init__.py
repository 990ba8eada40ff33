"""The experiment grid behind `python -m recg_jax.experiments` (the command line), one concern a module.

- planning.py: which runs a grid holds (RunSpec, grid_axes, plan_runs, shard_of) and each run's config
  and fingerprint (run_config, run_fingerprint).
- stats.py: finished runs aggregated over seeds (observations, aggregate, aggregate_grid), gains and
  paired t-tests, results.csv.
- report.py: the markdown tables (results.md, tables/<section>.md) with their header and footnotes.
- figures.py: what the plots draw (pair_bar_data, alpha_series, projected_items of a run's best
  parameters) and DIR/plots/*.png.
- runner.py: running the plan (run_grid, execute_run), each run's done.json / failed.json marker, and
  the machine the runs are on; after the runs, the tables and figures.

A module imports only those listed above it.
"""
