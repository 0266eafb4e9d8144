"""The `convlens` command line: parsing and printing only; every computation lives below it."""
