"""Console scripts: the turnutils-style harness and the operator's user-database tool."""
