"""Default pass pipelines shared by targets. Lossless only: lossy passes are opt-in."""

LOSSLESS = ("fold_constants", "eliminate_noops", "cleanup")
