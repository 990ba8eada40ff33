"""Item-embedding throughput: our Flax encoder against PyTorch sentence-transformers, on CPU.

Embeds a whole catalogue (default: Scientific, 4,344 items, default `fields` template) with
all-MiniLM-L6-v2 in both, on the same texts, truncated to the same 128 tokens, with the same batch size and
the same number of CPU threads. Runs alternate (ours, torch, ours, torch, ...) so that load from other
processes hits both alike; one warm-up run each (compiles, allocator warm-up) is excluded; the median of
`--runs` timed runs is reported, with the max abs difference between the two outputs.

  RECG_DATA_ROOT=<folder with Scientific/> python bench/embed_throughput.py --threads 2 --runs 3
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))


def parse_args():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--data_root", default=os.environ.get("RECG_DATA_ROOT", ""))
  p.add_argument("--domain", default="Scientific")
  p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
  p.add_argument("--runs", type=int, default=3)
  p.add_argument("--batch_size", type=int, default=None, help="default: config.encoder.batch_size")
  p.add_argument("--bucket_sizes", default=None, help="comma-separated; default: config.encoder.bucket_sizes")
  p.add_argument("--dtype", default=None, help="float32 | bfloat16; default: config.encoder.dtype")
  p.add_argument("--max_items", type=int, default=0, help="embed only the first N items (0 = all)")
  p.add_argument("--model", default=None, help="default: config.encoder.model")
  p.add_argument(
      "--texts_file",
      default=None,
      help="embed these texts (one per line) instead of a catalogue read from --data_root",
  )
  p.add_argument("--skip_torch", action="store_true")
  return p.parse_args()


def item_texts(config, data_root: str, domain: str) -> tuple[list[str], str]:
  """The catalogue's rendered item texts (rows 1..I) and how they were read."""
  config.data.root = data_root
  with tempfile.TemporaryDirectory() as workdir:
    from recg_jax.data import prepare  # pylint: disable=g-import-not-at-top

    data = prepare.load_domain(config, domain, workdir, log=lambda s: None)
  return [str(t) for t in data.item_text[1:]], "recg_jax.data.prepare.load_domain"


def main():
  args = parse_args()
  # Pin both frameworks to the same cores before either starts its thread pools: XLA's CPU client sizes
  # its pool from the affinity mask, torch is told explicitly.
  cores = sorted(os.sched_getaffinity(0))[: args.threads]
  os.sched_setaffinity(0, cores)
  os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
  os.environ.setdefault("MKL_NUM_THREADS", str(args.threads))

  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from recg_jax.config import default  # pylint: disable=g-import-not-at-top
  from recg_jax.encoders import embed  # pylint: disable=g-import-not-at-top
  from recg_jax.encoders import load_encoder  # pylint: disable=g-import-not-at-top
  from recg_jax.encoders import sources  # pylint: disable=g-import-not-at-top

  config = default.get_config()
  if args.batch_size:
    config.encoder.batch_size = args.batch_size
  if args.bucket_sizes:
    config.encoder.bucket_sizes = tuple(int(b) for b in args.bucket_sizes.split(","))
  if args.dtype:
    config.encoder.dtype = args.dtype
  if args.model:
    config.encoder.model = args.model
  if args.texts_file:
    with open(args.texts_file, encoding="utf-8") as f:
      texts, reader = [line.rstrip("\n") for line in f], args.texts_file
  elif args.data_root:
    texts, reader = item_texts(config, args.data_root, args.domain)
  else:
    sys.exit("set RECG_DATA_ROOT or --data_root to the folder holding the RecBole domains")
  if args.max_items:
    texts = texts[: args.max_items]
  what = "texts" if args.texts_file else args.domain
  print(
      f"{len(texts)} items ({what}, read with {reader}); {len(cores)} thread(s) on cores {cores}; "
      f"jax {jax.__version__} on {jax.devices()[0].platform}; batch {config.encoder.batch_size}, buckets "
      f"{tuple(config.encoder.bucket_sizes)}, dtype {config.encoder.dtype}, max_tokens "
      f"{config.text.max_tokens}",
      flush=True,
  )

  encoder = load_encoder(config.encoder)
  options = embed.compiler_options(config.encoder.dtype, config.encoder.xla_cpu_tuning)
  print(f"XLA compiler options: {options}", flush=True)
  lengths = embed.tokenize(
      encoder.tokenizer, embed.prepare_texts(texts, config.text.empty_fallback), config.text.max_tokens
  )[1]
  print(
      f"tokens per item: mean {lengths.mean():.1f}, median {np.median(lengths):.0f}, "
      f"{(lengths >= config.text.max_tokens).mean():.1%} truncated at {config.text.max_tokens}",
      flush=True,
  )

  def run_ours():
    return embed.embed_texts(encoder, texts, config.encoder, config.text, progress=False)

  runners = {"recg_jax (flax)": run_ours}
  if not args.skip_torch:
    from sentence_transformers import SentenceTransformer  # pylint: disable=g-import-not-at-top
    import torch  # pylint: disable=g-import-not-at-top

    torch.set_num_threads(args.threads)
    folder = sources.resolve(config.encoder.model, config.encoder.revision).path
    st = SentenceTransformer(str(folder), device="cpu")
    st.max_seq_length = config.text.max_tokens
    st_texts = embed.prepare_texts(texts, config.text.empty_fallback)

    def run_torch():
      with torch.inference_mode():
        return st.encode(
            st_texts,
            batch_size=config.encoder.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )

    runners["torch sentence-transformers"] = run_torch

  outputs, times, cpu = {}, {name: [] for name in runners}, {name: [] for name in runners}
  for name, fn in runners.items():  # warm-up: compiles and first-touch allocations, not timed
    start = time.perf_counter()
    outputs[name] = fn()
    print(f"warm-up {name}: {time.perf_counter() - start:.1f}s", flush=True)
  for _ in range(args.runs):
    for name, fn in runners.items():
      start, start_cpu = time.perf_counter(), time.process_time()
      fn()
      times[name].append(time.perf_counter() - start)
      cpu[name].append(time.process_time() - start_cpu)
  # CPU seconds (all threads of this process) are reported beside wall time: on a shared machine they
  # move much less with other processes' load.
  rates, cpu_rates = {}, {}
  for name, ts in times.items():
    rates[name] = len(texts) / statistics.median(ts)
    cpu_rates[name] = len(texts) / statistics.median(cpu[name])
    print(
        f"{name:30s} {rates[name]:8.1f} items/s  (median of {len(ts)}: "
        f"{', '.join(f'{t:.2f}s' for t in ts)}); {cpu_rates[name]:.1f} items per CPU-second"
    )
  if len(rates) == 2:
    (ours, ref), (ours_cpu, ref_cpu) = rates.values(), cpu_rates.values()
    a, b = outputs.values()
    cos = np.sum(a * b, axis=1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    print(
        f"speed ratio ours/torch: {ours / ref:.2f}x wall, {ours_cpu / ref_cpu:.2f}x CPU time; "
        f"max abs diff of normalised embeddings {np.abs(a - b).max():.2e}, min cosine {cos.min():.6f}"
    )


if __name__ == "__main__":
  main()
