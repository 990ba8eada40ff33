"""Made-up runs for the grid and study runners: patch both ways a runner executes runs."""

from recg_jax.grid import runner


def as_members(execute_run):
  """An execute_members that runs each member through `execute_run` (made-up runs train nothing)."""

  def execute_members(configs, specs, run_dirs, domains, tables, group_dir):
    del group_dir
    out = []
    for config, spec, run_dir in zip(configs, specs, run_dirs):
      try:
        out.append(execute_run(config, spec, run_dir, domains, tables))
      except Exception as e:  # pylint: disable=broad-except  (as the real one: a member's failure is its own)
        out.append(e)
    return out

  return execute_members


def fake_runs(mp, execute_run) -> None:
  """Runs alone go through `execute_run`, runs trained together through as_members(execute_run)."""
  mp.setattr(runner, "execute_run", execute_run)
  mp.setattr(runner, "execute_members", as_members(execute_run))
