"""The `edgegate` command: one module per verb group, each exposing `register(subparsers)`."""
