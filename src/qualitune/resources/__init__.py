"""Package data: the KADID-10k DMOS table the demo dataset borrows its MOS from, and its provenance."""
