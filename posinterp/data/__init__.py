"""The data: text from the user's files and the built-in corpora, tokens, packed sequences, summarization pairs.

Owns: `files` (reading text, records and saved datasets), `sources` (gutenberg, pydoc, Python source, the
mixes), `corpus` (a `--data` spec → documents, its checks and composition), `tokens`, `packing` (fixed-length
training sequences), `summaries` / `sft` (document–summary pairs and their prompt and labels) and `aclsum`
(the built-in set of ACL papers → abstracts, read from its pinned PyPI wheel).

May import: the shared core only; never `posinterp.model` or a stage.
"""
