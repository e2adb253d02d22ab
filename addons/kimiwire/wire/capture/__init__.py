"""What captures keep and give back: secrets redacted on the way in, credentials restored on replay."""
