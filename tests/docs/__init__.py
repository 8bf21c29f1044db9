"""Every docs code block and README command, run on its own."""
