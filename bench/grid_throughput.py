"""Grid throughput: the experiment grid's runner at an earlier revision against the current one, side by side.

  python bench/grid_throughput.py --workdir=DIR [--baseline_rev=REV] [--repeats=2] \
      [--config=configs/grid_shared.py:reduced_scientific] [--set=experiment.backbones='("sasrec",)' ...]

Both sides are checked out as detached git worktrees, the baseline revision in DIR/src_baseline and
the current one (--current_rev, default HEAD: commit before benchmarking) in DIR/src_current, so editing
the working tree while the benchmark runs changes nothing; both sides run
`python -m recg_jax.experiments` on the same config, data and embedding caches (prepared once, in
DIR/warm, then copied), with the same threads, in alternating order (baseline first in even repeats),
each in a fresh workdir with a cold compilation cache. Each side's process counts the programs it had to
compile through jax.monitoring. The report (DIR/grid_throughput.md, also printed) gives each side's
median wall time, runs per hour and compiles, their ratio, and the mean metrics of every setting over its
seeds and repeats on both sides (they should agree within seed noise; the current side draws its batch
order differently, so seeds do not match one to one). A finished side of a repeat (DIR/<side>_r<k>/
timing.json) is not run again: an interrupted benchmark resumes.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import pathlib
import runpy
import shutil
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
# A revision whose runner trains every run alone, one compiled program per run (before runs trained
# together and read their hyperparameters as traced inputs).
DEFAULT_BASELINE = "572d1de"
METRICS = (("in_domain", "test/full/ndcg@10"), ("zero_shot", "zero_shot/full/ndcg@10"))


def _child(argv: list[str]) -> None:
  """`child SRC STATS_JSON ARGS...`: runs recg_jax.experiments of SRC with ARGS, counting compiles."""
  src, stats_path, args = argv[0], pathlib.Path(argv[1]), argv[2:]
  sys.path.insert(0, src)
  import jax  # pylint: disable=g-import-not-at-top

  totals = collections.Counter()

  def on_duration(event, duration_secs, **_):
    if event == "/jax/core/compile/backend_compile_duration":
      totals["programs"] += 1
      totals["compile_s"] += duration_secs

  def on_event(event, **_):
    if event == "/jax/compilation_cache/cache_hits":
      totals["cache_hits"] += 1

  jax.monitoring.register_event_duration_secs_listener(on_duration)
  jax.monitoring.register_event_listener(on_event)
  sys.argv = ["recg_jax.experiments", *args]
  try:
    runpy.run_module("recg_jax.experiments", run_name="__main__", alter_sys=True)
  finally:
    totals["compiles"] = totals["programs"] - totals["cache_hits"]
    stats_path.write_text(json.dumps(dict(totals)))


def _run(cmd: list[str], cwd: pathlib.Path, log: pathlib.Path) -> float:
  t0 = time.perf_counter()
  with open(log, "w", encoding="utf-8") as f:
    proc = subprocess.run(cmd, cwd=cwd, stdout=f, stderr=subprocess.STDOUT, check=False)
  elapsed = time.perf_counter() - t0
  if proc.returncode != 0:
    raise SystemExit(f"{' '.join(cmd)} failed with exit status {proc.returncode}; see {log}")
  return elapsed


def _source(workdir: pathlib.Path, side: str, rev: str) -> pathlib.Path:
  """A detached worktree of `rev` in DIR/src_<side>."""
  rev = subprocess.run(
      ["git", "-C", str(ROOT), "rev-parse", "--short", rev], check=True, capture_output=True, text=True
  ).stdout.strip()
  src = workdir / f"src_{side}"
  if not (src / "recg_jax").is_dir():
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(src), rev], check=True)
  head = subprocess.run(
      ["git", "-C", str(src), "rev-parse", "--short", "HEAD"], check=True, capture_output=True, text=True
  ).stdout.strip()
  if not rev.startswith(head) and not head.startswith(rev):
    raise SystemExit(f"{src} holds {head}, not {rev}: remove it (git worktree remove) or pass its revision")
  return src


def _metrics_of(workdir: pathlib.Path) -> dict[tuple[str, str, str], float]:
  """{(setting without seed, stage, domain): metric} per finished run, keyed with the seed."""
  out = {}
  for done in sorted((workdir / "runs").glob("**/done.json")):
    marker = json.loads(done.read_text())
    setting = marker["relpath"].rsplit("/", 1)[0]
    for rec in marker["records"]:
      for stage, key in METRICS:
        if rec["stage"] == stage and key in rec["metrics"]:
          out[(setting, stage, rec["domain"], marker["spec"]["seed"])] = rec["metrics"][key]
  return out


def _report(
    workdir: pathlib.Path, sides: dict[str, list[dict]], args, baseline_rev: str, current_rev: str
) -> str:
  lines = [
      f"# Grid throughput: `{args.config}` {' '.join(args.set)}",
      "",
      f"- command: `python bench/grid_throughput.py {' '.join(sys.argv[1:])}`",
      f"- baseline: the runner at revision {baseline_rev}; current: revision {current_rev}",
      f"- machine: {os.cpu_count()} CPUs; repeats alternate the order of the two sides",
      "",
      "| side | repeats | runs | median wall (s) | runs/hour | XLA compiles | persistent-cache loads |"
      " compile s |",
      "|---|---|---|---|---|---|---|---|",
  ]
  med = {}
  for side, timings in sides.items():
    if not timings:
      continue
    wall = statistics.median(t["wall_s"] for t in timings)
    runs = timings[0]["runs"]
    med[side] = wall
    lines.append(
        f"| {side} | {len(timings)} | {runs} | {wall:.0f} | {3600 * runs / wall:.1f} | "
        f"{statistics.median(t['compiles'].get('compiles', 0) for t in timings):.0f} | "
        f"{statistics.median(t['compiles'].get('cache_hits', 0) for t in timings):.0f} | "
        f"{statistics.median(t['compiles'].get('compile_s', 0) for t in timings):.0f} |"
    )
  if len(med) == 2:
    lines += [
        "",
        f"Speed-up (median baseline wall / median current wall): "
        f"**{med['baseline'] / med['current']:.2f}x**",
    ]
  values = collections.defaultdict(lambda: collections.defaultdict(list))
  for side, timings in sides.items():
    for t in timings:
      for (setting, stage, domain, _), v in _metrics_of(pathlib.Path(t["workdir"])).items():
        values[(setting, stage, domain)][side].append(v)
  lines += [
      "",
      "Full-ranking NDCG@10 (%), mean ± std over seeds and repeats:",
      "",
      "| run | stage | domain | baseline | current |",
      "|---|---|---|---|---|",
  ]
  fmt = lambda v: (
      f"{100 * statistics.mean(v):.2f} ± {100 * statistics.stdev(v):.2f}"
      if len(v) > 1
      else f"{100 * v[0]:.2f}"
      if v
      else "—"
  )
  for (setting, stage, domain), by_side in sorted(values.items()):
    lines.append(
        f"| {setting} | {stage} | {domain} | {fmt(by_side['baseline'])} | {fmt(by_side['current'])} |"
    )
  text = "\n".join(lines) + "\n"
  (workdir / "grid_throughput.md").write_text(text)
  return text


def main() -> None:
  if len(sys.argv) > 1 and sys.argv[1] == "child":
    _child(sys.argv[2:])
    return
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
  parser.add_argument("--workdir", required=True, type=pathlib.Path)
  parser.add_argument("--config", default="configs/grid_shared.py:reduced_scientific")
  parser.add_argument(
      "--set",
      action="append",
      default=[],
      help="a config override for both sides, e.g. experiment.seeds='(0,1)'",
  )
  parser.add_argument("--baseline_rev", default=DEFAULT_BASELINE)
  parser.add_argument("--current_rev", default="HEAD")
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument(
      "--cache_from",
      type=pathlib.Path,
      default=None,
      help="a grid folder whose cache/data and cache/embeddings seed DIR/warm (entries are "
      "keyed by their inputs and config, so a stale one is simply not used)",
  )
  args = parser.parse_args()
  workdir = args.workdir.absolute()
  workdir.mkdir(parents=True, exist_ok=True)
  sources = {
      "baseline": _source(workdir, "baseline", args.baseline_rev),
      "current": _source(workdir, "current", args.current_rev),
  }
  revs = {
      side: subprocess.run(
          ["git", "-C", str(src), "rev-parse", "--short", "HEAD"], check=True, capture_output=True, text=True
      ).stdout.strip()
      for side, src in sources.items()
  }
  overrides = [f"--config.{s}" for s in args.set]
  grid_args = lambda wd: [f"--config={args.config}", f"--workdir={wd}", "--noplots", *overrides]

  warm = workdir / "warm"
  if not (warm / "grid.json").exists():
    if args.cache_from is not None:
      for part in ("data", "embeddings"):
        if (args.cache_from / "cache" / part).is_dir():
          shutil.copytree(args.cache_from / "cache" / part, warm / "cache" / part, dirs_exist_ok=True)
    print(f"[bench] preparing data and embeddings once in {warm}", flush=True)
    _run(
        [sys.executable, "-m", "recg_jax.experiments", *grid_args(warm), "--aggregate_only"],
        sources["current"],
        workdir / "warm.log",
    )

  sides: dict[str, list[dict]] = {"baseline": [], "current": []}
  for r in range(args.repeats):
    order = ("baseline", "current") if r % 2 == 0 else ("current", "baseline")
    for side in order:
      wd = workdir / f"{side}_r{r}"
      timing_path = wd / "timing.json"
      if not timing_path.exists():
        shutil.rmtree(wd, ignore_errors=True)
        for part in ("data", "embeddings"):
          shutil.copytree(warm / "cache" / part, wd / "cache" / part)
        src = sources[side]
        stats = wd / "compiles.json"
        print(f"[bench] repeat {r}: {side}", flush=True)
        wall = _run(
            [
                sys.executable,
                str(pathlib.Path(__file__).resolve()),
                "child",
                str(src),
                str(stats),
                *grid_args(wd),
            ],
            src,
            wd.with_suffix(".log"),
        )
        timing = {
            "side": side,
            "repeat": r,
            "wall_s": wall,
            "workdir": str(wd),
            "runs": len(list((wd / "runs").glob("**/done.json"))),
            "compiles": json.loads(stats.read_text()),
        }
        timing_path.write_text(json.dumps(timing, indent=1))
        print(f"[bench] repeat {r}: {side} took {wall:.0f}s", flush=True)
      sides[side].append(json.loads(timing_path.read_text()))
      print(_report(workdir, sides, args, revs["baseline"], revs["current"]), flush=True)


if __name__ == "__main__":
  main()
