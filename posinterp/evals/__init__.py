"""The evaluations: passkey retrieval and k_max, sliding-window perplexity, the original-window regression,
summarization (ROUGE), RULER's effective length, comparing runs, and what they share (loading the model under test, progress, plots).

Owns: `common`, `passkey`, `perplexity`, `original` with `tasks` (lm-eval's zero-shot tasks), `summarize`,
`compare`, `progress`, `plots`, `synthetic` (the passkey task as training data, in the eval's format), and
`ruler` with `ruler_tasks`, `ruler_prompts`, `ruler_lists` and `ruler_score` (RULER's synthetic tasks and
the effective length).

May import: the shared core, `posinterp.model` and `posinterp.data`.
"""
