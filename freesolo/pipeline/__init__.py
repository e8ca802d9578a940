"""One explicit function per pipeline stage (pretrain, freemask, train, ...), each importable and used by the CLI."""
