"""Where stage jobs run: local processes or Kubernetes PyTorchJobs."""
