"""The policy layer: its values, units, file loader and the daemon's policy source."""
