"""bf16 parity and item-embedding throughput on an accelerator (or any JAX backend).

1. A BERT-family checkpoint folder (e.g. all-MiniLM-L6-v2): embeds `--texts_file` in float32 and in
   bfloat16 with our encoder, and prints items/s for each (median of --runs after a warm-up) and the bf16
   error: max abs difference and min cosine between the two normalised embeddings, and how often the
   top-10 nearest neighbours of an item agree.
2. A decoder of SmolLM2-135M's shapes (`--decoder_config`, a Llama config.json) with RANDOM weights (the
   throughput of a decoder does not depend on its values), in bfloat16, mean pooling, bidirectional
   attention (LLM2Vec style), tokenised with `--decoder_tokenizer`: items/s.

  python bench/accelerator_check.py --model=DIR --texts_file=texts.txt \
      --decoder_config=config.json --decoder_tokenizer=tokenizer.json
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

from recg_jax import encoders  # pylint: disable=g-import-not-at-top,wrong-import-position
from recg_jax.config import default  # pylint: disable=g-import-not-at-top,wrong-import-position
from recg_jax.encoders import embed  # pylint: disable=g-import-not-at-top,wrong-import-position
from recg_jax.encoders import llama  # pylint: disable=g-import-not-at-top,wrong-import-position


def timed(fn, runs: int) -> tuple[float, np.ndarray]:
  out = fn()  # warm-up: compiles every bucket shape
  times = []
  for _ in range(runs):
    t0 = time.perf_counter()
    out = fn()
    times.append(time.perf_counter() - t0)
  return statistics.median(times), out


def random_decoder_tensors(hf: dict, seed: int = 0) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  h, f, v = hf["hidden_size"], hf["intermediate_size"], hf["vocab_size"]
  hd = hf.get("head_dim") or h // hf["num_attention_heads"]
  q, kv = hf["num_attention_heads"] * hd, hf["num_key_value_heads"] * hd
  w = lambda *shape: (rng.standard_normal(shape, np.float32) * 0.02)
  t = {"model.embed_tokens.weight": w(v, h), "model.norm.weight": np.ones(h, np.float32)}
  for i in range(hf["num_hidden_layers"]):
    p = f"model.layers.{i}."
    t.update(
        {
            p + "self_attn.q_proj.weight": w(q, h),
            p + "self_attn.k_proj.weight": w(kv, h),
            p + "self_attn.v_proj.weight": w(kv, h),
            p + "self_attn.o_proj.weight": w(h, q),
            p + "mlp.gate_proj.weight": w(f, h),
            p + "mlp.up_proj.weight": w(f, h),
            p + "mlp.down_proj.weight": w(h, f),
            p + "input_layernorm.weight": np.ones(h, np.float32),
            p + "post_attention_layernorm.weight": np.ones(h, np.float32),
        }
    )
  return t


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--model", required=True)
  parser.add_argument("--texts_file", required=True)
  parser.add_argument("--decoder_config", default="")
  parser.add_argument("--decoder_tokenizer", default="")
  parser.add_argument("--batch_size", type=int, default=256)
  parser.add_argument("--runs", type=int, default=3)
  parser.add_argument(
      "--torch",
      action="store_true",
      help="also time sentence-transformers (PyTorch, float32, same texts and batch size) "
      "on the default torch device",
  )
  args = parser.parse_args()

  texts = pathlib.Path(args.texts_file).read_text(encoding="utf-8").splitlines()
  config = default.get_config()
  config.encoder.model = args.model
  config.encoder.batch_size = args.batch_size
  print(f"devices: {jax.devices()}; {len(texts)} texts; batch {args.batch_size}", flush=True)
  report = {"devices": str(jax.devices()), "texts": len(texts), "batch_size": args.batch_size}

  encoder = encoders.load_encoder(config.encoder)
  outputs = {}
  for dtype in ("float32", "bfloat16"):
    config.encoder.dtype = dtype
    seconds, outputs[dtype] = timed(
        lambda: embed.embed_texts(encoder, texts, config.encoder, config.text, progress=False), args.runs
    )
    report[f"bert_{dtype}_items_per_s"] = len(texts) / seconds
    print(f"{encoder.model_id} {dtype}: {len(texts) / seconds:,.0f} items/s", flush=True)
  a, b = outputs["float32"], outputs["bfloat16"]
  cos = np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
  top_a = np.argsort(-(a @ a.T), axis=1)[:, 1:11]
  top_b = np.argsort(-(b @ b.T), axis=1)[:, 1:11]
  overlap = np.mean([len(set(x) & set(y)) / 10 for x, y in zip(top_a, top_b)])
  report.update(
      bf16_max_abs_diff=float(np.max(np.abs(a - b))),
      bf16_min_cosine=float(cos.min()),
      bf16_mean_cosine=float(cos.mean()),
      bf16_top10_neighbour_overlap=float(overlap),
  )
  print(
      f"bf16 vs f32: max abs diff {report['bf16_max_abs_diff']:.2e}, min cosine {cos.min():.6f}, "
      f"mean cosine {cos.mean():.6f}, top-10 neighbour overlap {overlap:.3f}",
      flush=True,
  )

  if args.torch:
    from sentence_transformers import SentenceTransformer  # pylint: disable=g-import-not-at-top
    import torch  # pylint: disable=g-import-not-at-top

    device = "cuda" if torch.cuda.is_available() else "cpu"
    st = SentenceTransformer(args.model, device=device, model_kwargs={"torch_dtype": torch.float32})
    st.max_seq_length = int(config.text.max_tokens)

    def run_torch():
      out = st.encode(texts, batch_size=args.batch_size, normalize_embeddings=True, convert_to_numpy=True)
      if device == "cuda":
        torch.cuda.synchronize()
      return out

    seconds, ref = timed(run_torch, args.runs)
    report["torch_float32_items_per_s"] = len(texts) / seconds
    report["ours_vs_torch_float32"] = report["bert_float32_items_per_s"] / report["torch_float32_items_per_s"]
    report["max_abs_diff_vs_torch"] = float(np.max(np.abs(ref - a)))
    print(
        f"sentence-transformers float32 on {device}: {len(texts) / seconds:,.0f} items/s; ours/torch "
        f"{report['ours_vs_torch_float32']:.2f}x; max abs diff {report['max_abs_diff_vs_torch']:.2e}",
        flush=True,
    )

  if args.decoder_config:
    from tokenizers import Tokenizer  # pylint: disable=g-import-not-at-top

    hf = json.loads(pathlib.Path(args.decoder_config).read_text())
    config.encoder.dtype = "bfloat16"
    config.encoder.attention = "bidirectional"
    module, params = llama.build(hf, random_decoder_tensors(hf), config.encoder)
    decoder = encoders.Encoder(
        module=module,
        params=params,
        tokenizer=Tokenizer.from_file(args.decoder_tokenizer),
        hidden_dim=hf["hidden_size"],
        model_id="random SmolLM2-135M shapes",
        weights_hash="random",
        pooling="mean",
        normalize=True,
        family="decoder",
        model_type="llama",
    )
    seconds, _ = timed(
        lambda: embed.embed_texts(decoder, texts, config.encoder, config.text, progress=False), args.runs
    )
    report["smollm2_shapes_bf16_items_per_s"] = len(texts) / seconds
    print(
        f"SmolLM2-135M shapes (random weights), bf16, bidirectional, mean: "
        f"{len(texts) / seconds:,.0f} items/s",
        flush=True,
    )
  print(json.dumps(report), flush=True)


if __name__ == "__main__":
  main()
