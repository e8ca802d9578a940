"""One explicit function per pipeline stage (pretrain, freemask, train, ...), each also a CLI command."""
