"""Shared by training and serving: the engine interface, the prompt renderer, trie-constrained beam search
(PyTorch engine; a vLLM engine later), SIDs → items, and the servable bundle format. Imports only sid_index."""
