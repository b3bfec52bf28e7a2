"""The timing harness: imgconv's kernels and stores against the classic methods, side by side."""
