"""The `vlmd` command line: its commands, the HTTP client and the progress bar."""
