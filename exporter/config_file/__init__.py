"""Reading and checking YAML configuration files (the policy, the web config).

The bottom layer: it imports nothing else from `exporter`, so the policy loader and the web
config share it without either depending on the other.
"""
