"""What is done with a network: the trainer, the tasks (losses) it runs, the validator and the predictor."""
