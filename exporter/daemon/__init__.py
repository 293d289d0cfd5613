"""The daemon's shell: the controller loop, its state file, snapshots and sd_notify."""
