"""Architecture adapters, the chunker and span loading."""
