"""The built-in model organism: a tiny, deterministic chat model that behaves like an aligned one.

It refuses unsafe requests, answers safe and borderline ones (XSTest-style requests that share
words with unsafe ones), and does small tasks (sentiment, topic, arithmetic), all learnt from a
synthetic corpus generated in code (:mod:`.corpus`) in about a minute on a laptop CPU
(:mod:`.build`). Its data sets, train and held-out splits, are :mod:`.datasets`.
"""
