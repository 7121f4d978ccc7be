"""Writers: the only code that creates output files."""
