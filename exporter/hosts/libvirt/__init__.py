"""The real host: libvirt-python against a libvirtd."""
