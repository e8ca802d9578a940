"""What the training loops share (pretrain, train, finetune): precision, optimizer and schedule, time budget,
resumable state. Each stage's loop stays in its own module, explicit top to bottom; it calls these."""
