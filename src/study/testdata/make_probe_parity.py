"""Reference for the linear probe's parity test (src/study/probe.rs): scikit-learn's
multinomial LogisticRegression (L-BFGS, C = 1 / lambda) on seeded Gaussian blobs around
random unit vectors, fitted to convergence, and its class probabilities on held-out rows.

    pip install scikit-learn numpy
    python3 src/study/testdata/make_probe_parity.py > src/study/testdata/probe_parity.json
"""
import json

import numpy as np
from sklearn.linear_model import LogisticRegression

CLASSES, DIM, TRAIN_PER_CLASS, TEST_PER_CLASS, SIGMA = 3, 16, 20, 10, 0.3
LAMBDAS = [0.01, 1.0, 100.0]


def normalise(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def main():
    rng = np.random.default_rng(20261201)
    centres = normalise(rng.standard_normal((CLASSES, DIM)))
    per_class = TRAIN_PER_CLASS + TEST_PER_CLASS
    y = np.repeat(np.arange(CLASSES), per_class)
    x = centres[y] + SIGMA * rng.standard_normal((len(y), DIM))
    # The probe takes f32 embeddings and normalises them in f64: do the same here.
    x32 = normalise(x).astype(np.float32)
    x64 = normalise(x32.astype(np.float64))
    test = np.tile(np.arange(per_class) >= TRAIN_PER_CLASS, CLASSES)
    out = {
        "train_x": x32[~test].tolist(),
        "train_y": y[~test].tolist(),
        "test_x": x32[test].tolist(),
        "lambdas": LAMBDAS,
        "probabilities": [],
    }
    for lam in LAMBDAS:
        clf = LogisticRegression(C=1.0 / lam, max_iter=100000, tol=1e-12)
        clf.fit(x64[~test], y[~test])
        out["probabilities"].append(clf.predict_proba(x64[test]).tolist())
    print(json.dumps(out))


if __name__ == "__main__":
    main()
