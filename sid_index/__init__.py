"""Item text → embeddings → 3-level residual k-means codebooks → Semantic IDs, and the indexes decoding needs
(SID ↔ items over marisa-trie, CSR prefix tables). The lowest layer: imports no other radgr package."""
