"""`vlmd serve`: the nursery, systemd notification and the Datasette child."""
