"""libvirt sites: inventory, events and migrations of VMs on libvirt hosts reached over SSH."""
