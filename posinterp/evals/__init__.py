"""The evaluations: passkey retrieval and k_max, sliding-window perplexity, the original-window regression,
summarization (ROUGE), comparing runs, and what they share (loading the model under test, progress, plots).

Owns: `common`, `passkey`, `perplexity`, `original` with `tasks` (lm-eval's zero-shot tasks), `summarize`,
`compare`, `progress`, `plots`, and `synthetic` (the passkey task as training data, in the eval's format).

May import: the shared core, `posinterp.model` and `posinterp.data`.
"""
