"""Pure, synchronous document stages of the indexing pipeline: parse (sniff + extract), clean, split."""
