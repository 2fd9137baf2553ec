"""The classic baseline for Brown genre classification: TF-IDF + logistic regression.

Reads exactly the passages the classify task uses (same split by document, same
passage length, same evenly spaced evaluation passages), so its accuracy sits next to a
fine-tuned BERT's. A measurement, not part of the library: needs the ``baselines`` extra
(scikit-learn).

    python scripts/brown_tfidf_baseline.py [--config configs/bert-brown-minilm.toml] [--split test]
"""
from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> None:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    from qkv.config import from_dict
    from qkv.data import prepared
    from qkv.tasks.text_classification import ClassifyDataConfig, passages
    from qkv.train.config import load_run_config

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/bert-brown-minilm.toml")
    p.add_argument("--split", default="test", choices=["val", "test"])
    args = p.parse_args()
    data = from_dict(ClassifyDataConfig, load_run_config(args.config).data, where="data")
    folder = prepared(data.name, data.dir or None)
    x_train, y_train = passages(folder, "train", data.passage_words)
    x_eval, y_eval = passages(folder, args.split, data.passage_words, data.eval_passages_per_doc)
    t0 = time.perf_counter()
    vectorizer = TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2), min_df=2)
    classifier = LogisticRegression(C=10.0, max_iter=2000)
    classifier.fit(vectorizer.fit_transform(x_train), y_train)
    pred = classifier.predict(vectorizer.transform(x_eval))
    accuracy = float(np.mean(pred == np.array(y_eval)))
    print(f"TF-IDF (1-2 grams) + logistic regression: {len(x_train)} train passages of "
          f"{data.passage_words} words, {len(x_eval)} {args.split} passages")
    print(f"{args.split} accuracy {accuracy:.4f}  ({time.perf_counter() - t0:.1f} s)")


if __name__ == "__main__":
    main()
