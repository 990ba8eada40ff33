"""Sequential recommenders: SASRec, BERT4Rec, GRU4Rec over ID or frozen-LLM item inputs (recommender.py)."""
