"""The measuring harness: benchmarks (`nakhon bench`), the Node-RED peer and the
fault and attack scenarios (`nakhon verify`).

It starts and measures the product from outside; the product's own commands
(nakhon/) never import it, except the CLI, which dispatches to it.
"""
