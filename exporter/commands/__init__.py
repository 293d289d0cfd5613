"""The subcommands of `blockpull-exporter` and what they share."""
