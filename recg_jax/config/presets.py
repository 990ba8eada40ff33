"""Named settings of recg-jax beyond the paper's variants, and the paper's own, as config overrides.

`text_mix` is the best trained model in-domain (it beats text_knn under both protocols on both sources,
results/baselines_shared); zero-shot, no trained preset beats text_knn (docs/method.md, "Findings").
"""

from typing import Any

# Target weights of a 'mix' model's trained share of the score (1 = as trained, 0 = text_knn alone).
MIX_WEIGHTS = (0.0, 0.25, 0.5)
# Named settings: each is a set of config overrides (section.field -> value). docs/method.md says what
# each tests; recg_jax.baselines runs them side by side, and `--config=configs/<file>.py:preset=<name>`
# applies one to any config.
PRESETS: dict[str, dict[str, Any]] = {
    # No training.
    "text_knn": {"model.variant": "text_knn"},
    "text_knn_center": {"model.variant": "text_knn", "model.table_transform": "center"},
    # The paper's models (BPR, five uniform negatives, candidates W_p e + b_p).
    "sem": {"model.variant": "sem"},
    "recg": {"model.variant": "recg"},
    # The loss alone: full softmax cross-entropy.
    "sem_softmax": {"model.variant": "sem", "train.loss": "softmax"},
    "recg_softmax": {"model.variant": "recg", "train.loss": "softmax"},
    # Scoring in the frozen text space (softmax, cosine with a learned temperature).
    "text_residual": {
        "model.variant": "sem",
        "train.loss": "softmax",
        "model.score_space": "text",
        "model.text_user": "residual",
    },
    "text_attention": {
        "model.variant": "sem",
        "train.loss": "softmax",
        "model.score_space": "text",
        "model.text_user": "attention",
    },
    "text_mix": {
        "model.variant": "sem",
        "train.loss": "softmax",
        "model.score_space": "text",
        "model.text_user": "mix",
        "transfer.target_model_weights": MIX_WEIGHTS,
    },
    "text_mix_center": {
        "model.variant": "sem",
        "train.loss": "softmax",
        "model.score_space": "text",
        "model.text_user": "mix",
        "model.table_transform": "center",
        "transfer.target_model_weights": MIX_WEIGHTS,
    },
    # RecG's own parts (the merge of W_p e and W_a e for history items, L_gen on W_a, the sequence-level
    # step) on the mix model.
    "recg_text_mix": {
        "model.variant": "recg",
        "train.loss": "softmax",
        "model.score_space": "text",
        "model.text_user": "mix",
        "transfer.target_model_weights": MIX_WEIGHTS,
    },
    # Training-free variants of text_knn, centred (the leave-one-domain-out study's text baselines): the
    # recency decay, a multi-interest aggregate instead of the history mean, and the text fields embedded.
    "text_knn_center_d1": {
        "model.variant": "text_knn",
        "model.table_transform": "center",
        "model.knn_decay": 1.0,
    },
    "text_knn_center_d08": {
        "model.variant": "text_knn",
        "model.table_transform": "center",
        "model.knn_decay": 0.8,
    },
    "text_knn_center_d03": {
        "model.variant": "text_knn",
        "model.table_transform": "center",
        "model.knn_decay": 0.3,
    },
    "text_knn_center_last": {
        "model.variant": "text_knn",
        "model.table_transform": "center",
        "model.knn_decay": 0.0,
    },
    "text_knn_center_max": {
        "model.variant": "text_knn",
        "model.table_transform": "center",
        "model.knn_aggregate": "max",
    },
    "text_knn_center_soft005": {
        "model.variant": "text_knn",
        "model.table_transform": "center",
        "model.knn_aggregate": "softmax",
        "model.knn_temperature": 0.05,
    },
    "text_knn_center_soft02": {
        "model.variant": "text_knn",
        "model.table_transform": "center",
        "model.knn_aggregate": "softmax",
        "model.knn_temperature": 0.2,
    },
    # ... with each domain's table standardised or whitened on its own items instead of only centred.
    "text_knn_std_soft02": {
        "model.variant": "text_knn",
        "model.table_transform": "standardize",
        "model.knn_aggregate": "softmax",
        "model.knn_temperature": 0.2,
    },
    "text_knn_whiten_soft02": {
        "model.variant": "text_knn",
        "model.table_transform": "whiten",
        "model.knn_aggregate": "softmax",
        "model.knn_temperature": 0.2,
    },
    "text_knn_whiten1_soft02": {
        "model.variant": "text_knn",
        "model.table_transform": "whiten",
        "model.whiten_shrinkage": 1.0,
        "model.knn_aggregate": "softmax",
        "model.knn_temperature": 0.2,
    },
    "text_knn_center_title": {
        "model.variant": "text_knn",
        "model.table_transform": "center",
        "data.text_fields": ("title",),
    },
    # Trained on several domains: RecG's L_gen also over the held-out target's item texts (the paper's
    # setting; the study's runs leave them out by default), and the text-space models with the input
    # history left out of the softmax's classes.
    "recg_target_text": {"model.variant": "recg", "gen_loss.include_targets": True},
    "text_mix_center_masked": {
        "model.variant": "sem",
        "train.loss": "softmax",
        "model.score_space": "text",
        "model.text_user": "mix",
        "model.table_transform": "center",
        "train.softmax_mask_history": True,
        "transfer.target_model_weights": MIX_WEIGHTS,
    },
    "text_attention_center_masked": {
        "model.variant": "sem",
        "train.loss": "softmax",
        "model.score_space": "text",
        "model.text_user": "attention",
        "model.table_transform": "center",
        "train.softmax_mask_history": True,
    },
    # The learned aggregation: the text baseline's soft maximum, its decay and temperature fitted by full
    # softmax on the sources (recg_jax/knn_fit.py), starting from the baseline's values.
    "text_knn_center_fit": {
        "model.variant": "text_knn",
        "model.table_transform": "center",
        "model.knn_aggregate": "softmax",
        "model.knn_temperature": 0.2,
        "knn_fit.enabled": True,
    },
    # In-domain references: SASRec with item-ID embeddings.
    "id": {"model.variant": "id"},
    # ... trained to convergence where a study caps epochs (an ID model learns slowly from few
    # interactions per item: its early-stopping curve is flat for several epochs).
    "id_long": {"model.variant": "id", "train.num_epochs": 200, "train.patience": 10},
}
