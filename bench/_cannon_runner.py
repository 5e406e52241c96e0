"""Runs inside the Cannon's own virtual environment (numpy < 2, annieslasso): train on the given
rows, test on the others, write the labels and timings. Imports nothing of starlabels, so it
works with the package's pinned numpy.

    python _cannon_runner.py INPUT.npz OUTPUT.npz

INPUT holds train_flux, train_ivar, train_labels, test_flux, test_ivar, label_names, threads.
"""
import sys
import time

import numpy as np
import thecannon as tc


def main(inp: str, out: str) -> None:
    data = np.load(inp, allow_pickle=False)
    names = [str(n) for n in data["label_names"]]
    threads = int(data["threads"])
    vectorizer = tc.vectorizer.PolynomialVectorizer(names, 2)
    start = time.perf_counter()
    cpu0 = time.process_time()
    model = tc.CannonModel(data["train_labels"], data["train_flux"].astype(float),
                           data["train_ivar"].astype(float), vectorizer)
    model.train(threads=threads)
    train_seconds = time.perf_counter() - start
    train_cpu = time.process_time() - cpu0
    start = time.perf_counter()
    labels, cov, _ = model.test(data["test_flux"].astype(float), data["test_ivar"].astype(float),
                                threads=threads)
    test_seconds = time.perf_counter() - start
    errors = np.sqrt(np.clip(np.array([np.diag(c) for c in cov]), 0, None))
    np.savez(out, labels=np.asarray(labels, dtype=float), errors=errors,
             train_seconds=train_seconds, train_cpu_seconds=train_cpu,
             test_seconds=test_seconds, version=np.array(tc.__version__),
             numpy_version=np.array(np.__version__))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
