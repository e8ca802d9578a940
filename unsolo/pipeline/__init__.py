"""One explicit function per pipeline stage (pretrain, freemask, train, pseudo_label, predict, run), each importable
and used by the CLI."""
