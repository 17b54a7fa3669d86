"""One file per schema revision of the run store."""
