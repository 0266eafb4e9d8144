"""One module per `convlens visualize` method; each registers a runner with `convlens.cli.visualize.method`."""
