"""Search logs → samples → tokenizer/model → SFT → preference alignment (DPO, SimPO, ORPO, RAD-DPO and its
ablations) → offline evaluation → bundle export. Imports sid_index and decoding, never server."""
