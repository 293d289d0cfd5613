"""The HTTP(S) endpoint: server, basic auth, landing page and the web config file."""
