"""The outer layer: the composition root, the service runner, the CLI and its client. Imports everything."""
